-- ---------------------------------------------------------------------------
-- shard_flush (Citus): the whole flush of one shard group, CALLed at top level
-- on the worker that holds it, committing after the hand-off and each pass as
-- flush_in_passes() does. Returns its result and sizes to the coordinator.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE PROCEDURE pybatch.shard_flush(staging regclass, pending regclass, agents regclass, quarantine regclass,
                                     row_cap bigint, tolerance interval, lock_wait interval,
                                     INOUT outcome pybatch.shard_flush_result DEFAULT NULL)
LANGUAGE plpgsql
AS $fn$
-- CALLed at top level on the worker (by pybatch.citus_flush() through
-- master_run_on_worker, one connection per shard group), so it may COMMIT:
-- the hand-off is durable before any merge and every pass commits, as on one
-- server. No SET clause (COMMIT forbids it); it calls only functions that pin
-- their own search_path, and qualifies its own operators and types.
DECLARE
    result pybatch.flush_result;
    passes_before integer;
BEGIN
    -- Every step in read committed, whatever the defaults (as flush_in_passes()).
    COMMIT;
    SET TRANSACTION ISOLATION LEVEL READ COMMITTED;
    result := pybatch.shard_begin(staging, pending, agents, quarantine, row_cap, tolerance, lock_wait);
    COMMIT;
    SET TRANSACTION ISOLATION LEVEL READ COMMITTED;
    LOOP
        passes_before := result.passes;
        result := pybatch.shard_pass(result, pending, agents, quarantine);
        COMMIT;
        SET TRANSACTION ISOLATION LEVEL READ COMMITTED;
        EXIT WHEN result.skipped OR result.error IS NOT NULL OR result.passes OPERATOR(pg_catalog.=) passes_before;
    END LOOP;
    result.duration := pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) result.started_at;
    outcome := ROW(result, pg_catalog.pg_relation_size(agents), pg_catalog.pg_indexes_size(agents))::pybatch.shard_flush_result;
END
$fn$;
COMMENT ON PROCEDURE pybatch.shard_flush(regclass, regclass, regclass, regclass, bigint, interval, interval, pybatch.shard_flush_result) IS
    'Internal (Citus, on a worker): the whole flush of one shard group (staging, pending, agents, quarantine shards) in committed passes; returns its figures to the coordinator. Must be CALLed at top level.';
REVOKE EXECUTE ON PROCEDURE pybatch.shard_flush(regclass, regclass, regclass, regclass, bigint, interval, interval, pybatch.shard_flush_result) FROM PUBLIC;
