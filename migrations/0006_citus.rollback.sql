SET LOCAL citus.multi_shard_modify_mode = 'sequential';
-- Undo 0006: staging, pending and quarantine back to local tables on the
-- coordinator (their rows come back with them), the flush back in this database, and the Citus routines and per-shard log dropped.
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
CREATE OR REPLACE FUNCTION pybatch.flush_distributed(max_rows bigint, lock_wait interval)
RETURNS pybatch.flush_result
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT NULL::pybatch.flush_result;
$$;

DROP FUNCTION pybatch.citus_table_shape(integer);
DROP FUNCTION pybatch.citus_distribute();
DROP FUNCTION pybatch.citus_distributed_table(text);
DROP FUNCTION pybatch.citus_flush(bigint, interval);
DROP PROCEDURE pybatch.shard_flush(regclass, regclass, regclass, regclass, bigint, interval, interval, pybatch.shard_flush_result);
DROP FUNCTION pybatch.shard_pass(pybatch.flush_result, regclass, regclass, regclass);
DROP FUNCTION pybatch.shard_begin(regclass, regclass, regclass, regclass, bigint, interval, interval);
DROP FUNCTION pybatch.lock_pending(regclass, interval);
DROP FUNCTION pybatch.citus_distributed();
DROP TYPE pybatch.shard_flush_result;
DROP TABLE pybatch.flush_log_shards;
