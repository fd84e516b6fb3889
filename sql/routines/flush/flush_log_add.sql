-- ---------------------------------------------------------------------------
-- flush_log_add: one pass's own figures (what it added to its result) into its
-- flush's open row. Figures come from passes that ran, never from what a
-- caller passes in. Lanes of one flush add to the same row, in turn.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pybatch.flush_log_add(before pybatch.flush_result, after pybatch.flush_result)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    error_state text;
    error_message text;
BEGIN
    BEGIN
        UPDATE pybatch.flush_log l SET
            duration = pg_catalog.clock_timestamp() - l.started_at,
            passes = l.passes + (after.passes - before.passes),
            agents_updated = l.agents_updated + (after.agents_updated - before.agents_updated),
            stale_heartbeats = l.stale_heartbeats + (after.stale_heartbeats - before.stale_heartbeats),
            hot_updates = l.hot_updates + (after.hot_updates - before.hot_updates),
            deferred_agents = l.deferred_agents + (after.deferred_agents - before.deferred_agents),
            quarantined_agents = l.quarantined_agents + (after.quarantined_agents - before.quarantined_agents),
            newest_event_at = CASE WHEN after.newest_event_at IS DISTINCT FROM before.newest_event_at
                                   THEN GREATEST(l.newest_event_at, after.newest_event_at)
                                   ELSE l.newest_event_at END,
            error = CASE WHEN after.error IS NOT NULL THEN COALESCE(l.error || '; ', '') || after.error
                         ELSE l.error END
        WHERE l.id = after.flush_id AND l.completed_at IS NULL;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS error_state = RETURNED_SQLSTATE, error_message = MESSAGE_TEXT;
        RAISE WARNING 'pybatch: cannot record a pass in flush_log: %: %', error_state, error_message;
    END;
END
$$;
COMMENT ON FUNCTION pybatch.flush_log_add(pybatch.flush_result, pybatch.flush_result) IS
    'Internal: adds what a pass added (after minus before) to its flush''s open row in pybatch.flush_log; a failure to record is a warning, never the pass''s failure.';
