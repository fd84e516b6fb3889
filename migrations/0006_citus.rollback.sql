SET LOCAL citus.multi_shard_modify_mode = 'sequential';
-- Undo 0006: staging, pending and quarantine back to local tables on the
-- coordinator (their rows come back with them), the entry points back to 0004's
-- bodies, and the Citus routines and per-shard log dropped.
DO $fn$
DECLARE
    tbl text;
BEGIN
    FOREACH tbl IN ARRAY ARRAY['pybatch.heartbeats', 'pybatch.pending', 'pybatch.quarantine'] LOOP
        IF pybatch.citus_distributed_table(tbl) THEN
            PERFORM pg_catalog.undistribute_table(tbl::pg_catalog.regclass);
        END IF;
    END LOOP;
END
$fn$;
ALTER FUNCTION pybatch.align_owner() RESET citus.multi_shard_modify_mode;
CREATE OR REPLACE FUNCTION pybatch.flush(max_rows bigint DEFAULT NULL, lock_wait interval DEFAULT '0 seconds')
RETURNS pybatch.flush_result
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    result pybatch.flush_result;
    passes_before integer;
BEGIN
    -- The same steps in the caller's transaction: correct, but one transaction
    -- cannot prune its own old versions, so on a full page the later passes
    -- go non-HOT. Use CALL pybatch.flush_in_passes() where a COMMIT is allowed.
    result := pybatch.flush_begin(max_rows, lock_wait);
    LOOP
        passes_before := result.passes;
        result := pybatch.flush_pass(result);
        EXIT WHEN result.skipped OR result.error IS NOT NULL OR result.passes = passes_before;
    END LOOP;
    RETURN pybatch.flush_finish(result);
END
$$;

CREATE OR REPLACE PROCEDURE pybatch.flush_in_passes(max_rows bigint DEFAULT NULL,
                                         lock_wait interval DEFAULT '0 seconds',
                                         INOUT result pybatch.flush_result DEFAULT NULL)
LANGUAGE plpgsql
AS $$
-- No SET clause and no SECURITY DEFINER: PostgreSQL forbids COMMIT in a
-- procedure with either. It only calls schema-qualified functions that pin
-- their own search_path; the steps are SECURITY DEFINER.
DECLARE
    passes_before integer;
BEGIN
    result := pybatch.flush_begin(max_rows, lock_wait);
    COMMIT;  -- the hand-off is durable (as staging was) before any merge
    LOOP
        passes_before := result.passes;
        result := pybatch.flush_pass(result);
        COMMIT;  -- old versions of this pass become prunable; the next pass stays HOT
        EXIT WHEN result.skipped OR result.error IS NOT NULL OR result.passes = passes_before;
    END LOOP;
    result := pybatch.flush_finish(result);
    COMMIT;
END
$$;

DROP FUNCTION pybatch.citus_distribute();
DROP FUNCTION pybatch.citus_distributed_table(text);
DROP FUNCTION pybatch.citus_flush(bigint, interval);
DROP PROCEDURE pybatch.shard_flush(regclass, regclass, regclass, regclass, bigint, interval, interval, pybatch.shard_flush_result);
DROP FUNCTION pybatch.shard_pass(pybatch.flush_result, regclass, regclass, regclass);
DROP FUNCTION pybatch.shard_begin(regclass, regclass, regclass, regclass, bigint, interval, interval);
DROP FUNCTION pybatch.empty_result();
DROP FUNCTION pybatch.next_pass_in(pybatch.flush_result, regclass, regclass, regclass);
DROP FUNCTION pybatch.merge_pass_in(regclass, regclass, integer, uuid);
DROP FUNCTION pybatch.drain_into(regclass, regclass, regclass, regclass, bigint, interval);
DROP FUNCTION pybatch.lock_pending(regclass, interval);
DROP FUNCTION pybatch.citus_distributed();
DROP TYPE pybatch.shard_flush_result;
DROP TABLE pybatch.flush_log_shards;
