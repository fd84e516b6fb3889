-- ---------------------------------------------------------------------------
-- flush_begin: checks, the lock, and the hand-off from staging to pending.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pybatch.flush_begin(max_rows bigint DEFAULT NULL, lock_wait interval DEFAULT '0 seconds')
RETURNS pybatch.flush_result
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    result pybatch.flush_result;
    cfg pybatch.settings;
    drained record;
    error_state text;
    error_message text;
BEGIN
    IF max_rows < 0 THEN
        RAISE EXCEPTION 'pybatch.flush: max_rows must be 0 or more, not %', max_rows
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    result := pybatch.empty_result();
    IF NOT pybatch.flush_take_lock(COALESCE(lock_wait, interval '0')) THEN
        result.skipped := true;
        result.duration := pg_catalog.clock_timestamp() - result.started_at;
        RETURN result;
    END IF;
    SELECT * INTO STRICT cfg FROM pybatch.settings;
    -- A subtransaction: on any error the drain rolls back, staging keeps its rows,
    -- and the error is returned.
    BEGIN
        SELECT * INTO STRICT drained FROM pybatch.drain_into(
            'pybatch.heartbeats', 'pybatch.pending', 'public.workspace_agents', 'pybatch.quarantine',
            COALESCE(max_rows, cfg.max_rows_per_flush), cfg.future_tolerance);
        result.rows_staged := drained.rows_staged;
        result.future_heartbeats := drained.future_heartbeats;
        result.unknown_heartbeats := drained.unknown_heartbeats;
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        GET STACKED DIAGNOSTICS error_state = RETURNED_SQLSTATE, error_message = MESSAGE_TEXT;
        result.error := error_state || ': ' || error_message;
    END;
    RETURN result;
END
$$;
COMMENT ON FUNCTION pybatch.flush_begin(bigint, interval) IS
    'Internal step 1 of a flush: takes pybatch.flush_lock (or returns skipped after lock_wait), then drains staging into pybatch.pending, one row per agent numbered by heap page. On error staging is kept and the error returned.';
REVOKE EXECUTE ON FUNCTION pybatch.flush_begin(bigint, interval) FROM PUBLIC;
