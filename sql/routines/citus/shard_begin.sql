-- ---------------------------------------------------------------------------
-- Citus: one shard group's flush, on the worker that holds it.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pybatch.shard_begin(staging regclass, pending regclass, agents regclass, quarantine regclass,
                                    row_cap bigint, tolerance interval, lock_wait interval)
RETURNS pybatch.flush_result
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET work_mem = '64MB'
AS $fn$
DECLARE
    result pybatch.flush_result := pybatch.empty_result();
    drained record;
    error_state text;
    error_message text;
BEGIN
    IF NOT pybatch.lock_pending(pending, lock_wait) THEN
        result.skipped := true;
        result.duration := pg_catalog.clock_timestamp() - result.started_at;
        RETURN result;
    END IF;
    BEGIN
        SELECT * INTO STRICT drained FROM pybatch.drain_into(staging, pending, agents, quarantine, row_cap, tolerance, 1);
        result.rows_staged := drained.rows_staged;
        result.future_heartbeats := drained.future_heartbeats;
        result.unknown_heartbeats := drained.unknown_heartbeats;
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        GET STACKED DIAGNOSTICS error_state = RETURNED_SQLSTATE, error_message = MESSAGE_TEXT;
        result.error := error_state || ': ' || error_message;
    END;
    RETURN result;
END
$fn$;
COMMENT ON FUNCTION pybatch.shard_begin(regclass, regclass, regclass, regclass, bigint, interval, interval) IS
    'Internal (Citus, on a worker): step 1 of a shard group''s flush: locks its pending shard and drains its staging shard.';
