-- ---------------------------------------------------------------------------
-- flush_pass: the next pass, under the lock.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pybatch.flush_pass(result pybatch.flush_result)
RETURNS pybatch.flush_result
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    done pybatch.flush_result;
    error_state text;
    error_message text;
BEGIN
    IF result.skipped OR result.error IS NOT NULL THEN
        RETURN result;
    END IF;
    PERFORM pybatch.flush_take_lock(NULL);
    done := pybatch.next_pass_in(result, 'pybatch.pending', 'public.workspace_agents', 'pybatch.quarantine');
    -- Add this pass's own figures (what it added to result) to its flush's open
    -- row: figures come from passes that ran, never from what a caller passes in.
    BEGIN
        UPDATE pybatch.flush_log l SET
            duration = pg_catalog.clock_timestamp() - l.started_at,
            passes = l.passes + (done.passes - result.passes),
            agents_updated = l.agents_updated + (done.agents_updated - result.agents_updated),
            stale_heartbeats = l.stale_heartbeats + (done.stale_heartbeats - result.stale_heartbeats),
            hot_updates = l.hot_updates + (done.hot_updates - result.hot_updates),
            deferred_agents = l.deferred_agents + (done.deferred_agents - result.deferred_agents),
            quarantined_agents = l.quarantined_agents + (done.quarantined_agents - result.quarantined_agents),
            newest_event_at = CASE WHEN done.newest_event_at IS DISTINCT FROM result.newest_event_at
                                   THEN GREATEST(l.newest_event_at, done.newest_event_at)
                                   ELSE l.newest_event_at END,
            error = CASE WHEN done.error IS NOT NULL THEN COALESCE(l.error || '; ', '') || done.error
                         ELSE l.error END
        WHERE l.id = done.flush_id AND l.completed_at IS NULL;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS error_state = RETURNED_SQLSTATE, error_message = MESSAGE_TEXT;
        RAISE WARNING 'pybatch: cannot record a pass in flush_log: %: %', error_state, error_message;
    END;
    RETURN done;
END
$$;
COMMENT ON FUNCTION pybatch.flush_pass(pybatch.flush_result) IS
    'Internal step 2 of a flush, repeated: merges the pending rows of the lowest pass_no (one row per heap page) and adds its figures to result. passes does not grow when nothing was left.';
REVOKE EXECUTE ON FUNCTION pybatch.flush_pass(pybatch.flush_result) FROM PUBLIC;
