-- ---------------------------------------------------------------------------
-- flush_finish: record the flush and purge old history.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pybatch.flush_finish(result pybatch.flush_result)
RETURNS pybatch.flush_result
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    retention interval;
    error_state text;
    error_message text;
BEGIN
    IF result.skipped THEN
        RETURN result;  -- a skipped call did nothing; it is not logged
    END IF;
    result.duration := pg_catalog.clock_timestamp() - result.started_at;
    -- Twice at most: when the record itself fails (a full disk, a user's trigger
    -- on flush_log), that failure is what gets recorded, and the caller (the
    -- pg_cron loop, say) goes on. The merge has committed either way.
    FOR attempt IN 1 .. 2 LOOP
        BEGIN
            INSERT INTO pybatch.flush_log (started_at, duration, rows_staged, agents_updated,
                                           stale_heartbeats, unknown_heartbeats, future_heartbeats, error,
                                           passes, hot_updates, deferred_agents, quarantined_agents,
                                           newest_event_at, heap_bytes, index_bytes)
            VALUES (result.started_at, result.duration, result.rows_staged, result.agents_updated,
                    result.stale_heartbeats, result.unknown_heartbeats, result.future_heartbeats, result.error,
                    result.passes, result.hot_updates, result.deferred_agents, result.quarantined_agents,
                    result.newest_event_at,
                    pg_catalog.pg_relation_size('public.workspace_agents'::pg_catalog.regclass),
                    pg_catalog.pg_indexes_size('public.workspace_agents'::pg_catalog.regclass))
            RETURNING id INTO result.flush_id;
            SELECT s.history_retention INTO retention FROM pybatch.settings s;
            DELETE FROM pybatch.flush_log WHERE started_at < result.started_at - retention;
            EXIT;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS error_state = RETURNED_SQLSTATE, error_message = MESSAGE_TEXT;
            RAISE WARNING 'pybatch: cannot record the flush in flush_log: %: %', error_state, error_message;
            result.error := COALESCE(result.error || '; ', '') || 'flush_log: ' || error_state || ': ' || error_message;
        END;
    END LOOP;
    RETURN result;
END
$$;
COMMENT ON FUNCTION pybatch.flush_finish(pybatch.flush_result) IS
    'Internal step 3 of a flush: logs it in pybatch.flush_log (not when skipped) and purges history older than settings.history_retention.';
REVOKE EXECUTE ON FUNCTION pybatch.flush_finish(pybatch.flush_result) FROM PUBLIC;
