-- ---------------------------------------------------------------------------
-- flush_finish: complete the flush's row in flush_log and purge old history.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pybatch.flush_finish(result pybatch.flush_result)
RETURNS pybatch.flush_result
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    logged pybatch.flush_result;
    retention interval;
    error_state text;
    error_message text;
BEGIN
    IF result.skipped OR result.flush_id IS NULL THEN
        RETURN result;  -- a skipped call did nothing; a flush whose row could not be written has none
    END IF;
    BEGIN
        -- Complete the flush's open row and return it: the figures are what the steps
        -- recorded, never what a caller passes in. (Two flushers' steps may interleave,
        -- so this is the row of the flush_id, not the newest row.)
        UPDATE pybatch.flush_log l SET
            duration = pg_catalog.clock_timestamp() - l.started_at,
            completed_at = pg_catalog.clock_timestamp(),
            heap_bytes = pg_catalog.pg_relation_size('public.workspace_agents'::pg_catalog.regclass),
            index_bytes = pg_catalog.pg_indexes_size('public.workspace_agents'::pg_catalog.regclass)
        WHERE l.id = result.flush_id AND l.completed_at IS NULL
        RETURNING l.id, l.started_at, false, l.rows_staged, l.agents_updated, l.stale_heartbeats,
                  l.unknown_heartbeats, l.future_heartbeats, l.duration, l.error, l.passes, l.hot_updates,
                  l.deferred_agents, l.quarantined_agents, l.newest_event_at
        INTO logged;
        IF NOT FOUND THEN
            RETURN result;  -- no open row of that flush: nothing to complete
        END IF;
        result := logged;
        SELECT s.history_retention INTO retention FROM pybatch.settings s;
        DELETE FROM pybatch.flush_log WHERE started_at < result.started_at - retention;
    EXCEPTION WHEN OTHERS THEN
        -- A user's trigger on flush_log, say: the merge has committed either way.
        GET STACKED DIAGNOSTICS error_state = RETURNED_SQLSTATE, error_message = MESSAGE_TEXT;
        RAISE WARNING 'pybatch: cannot record the flush in flush_log: %: %', error_state, error_message;
        result.error := COALESCE(result.error || '; ', '') || 'flush_log: ' || error_state || ': ' || error_message;
    END;
    RETURN result;
END
$$;
COMMENT ON FUNCTION pybatch.flush_finish(pybatch.flush_result) IS
    'Internal step 3 of a flush: completes its row in pybatch.flush_log (duration, completed_at, table sizes), returns that row and purges history older than settings.history_retention.';
REVOKE EXECUTE ON FUNCTION pybatch.flush_finish(pybatch.flush_result) FROM PUBLIC;
