-- ---------------------------------------------------------------------------
-- flush_begin_lanes: checks, the lock, and the hand-off from staging to
-- pending, numbered for the given number of lanes (flush_begin(): one).
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pybatch.flush_begin_lanes(max_rows bigint, lock_wait interval, lanes integer)
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
    log_failure text;
BEGIN
    IF max_rows < 0 THEN
        RAISE EXCEPTION 'pybatch.flush: max_rows must be 0 or more, not %', max_rows
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF lanes IS NULL OR lanes NOT BETWEEN 1 AND 64 THEN
        RAISE EXCEPTION 'pybatch.flush: lanes must be between 1 and 64, not %', COALESCE(lanes::text, 'NULL')
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
            COALESCE(max_rows, cfg.max_rows_per_flush), cfg.future_tolerance, lanes);
        result.rows_staged := drained.rows_staged;
        result.future_heartbeats := drained.future_heartbeats;
        result.unknown_heartbeats := drained.unknown_heartbeats;
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        GET STACKED DIAGNOSTICS error_state = RETURNED_SQLSTATE, error_message = MESSAGE_TEXT;
        result.error := error_state || ': ' || error_message;
    END;
    -- The flush's row, committed with the hand-off: a flush killed later still
    -- reports what it drained and dropped. Twice at most: when the record itself
    -- fails (a full disk, a user's trigger on flush_log), that failure is what
    -- gets recorded, and the flush goes on.
    result.duration := pg_catalog.clock_timestamp() - result.started_at;
    FOR attempt IN 1 .. 2 LOOP
        BEGIN
            INSERT INTO pybatch.flush_log (started_at, duration, rows_staged, unknown_heartbeats,
                                           future_heartbeats, error)
            VALUES (result.started_at, result.duration, result.rows_staged, result.unknown_heartbeats,
                    result.future_heartbeats, COALESCE(result.error || '; ', '') || log_failure)
            RETURNING id INTO result.flush_id;
            EXIT;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS error_state = RETURNED_SQLSTATE, error_message = MESSAGE_TEXT;
            RAISE WARNING 'pybatch: cannot record the flush in flush_log: %: %', error_state, error_message;
            log_failure := 'flush_log: ' || error_state || ': ' || error_message;
        END;
    END LOOP;
    RETURN result;
END
$$;
COMMENT ON FUNCTION pybatch.flush_begin_lanes(bigint, interval, integer) IS
    'Internal step 1 of a flush in lanes: takes pybatch.flush_lock (or returns skipped after lock_wait), then drains staging into pybatch.pending, one row per agent numbered by heap page and lane (see drain_into), and writes the flush''s row in pybatch.flush_log. On error staging is kept and the error returned.';
REVOKE EXECUTE ON FUNCTION pybatch.flush_begin_lanes(bigint, interval, integer) FROM PUBLIC;
