-- ---------------------------------------------------------------------------
-- One pass, by number, on any set of relations: the lowest (next_pass_in) or a
-- lane's (flush_lane_pass). A failing pass is retried one agent at a time; an
-- agent that fails waits in pending with its error (pass_no NULL) until the
-- flush is judged, and later passes go on.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pybatch.pass_in(result pybatch.flush_result, pending regclass, agents regclass,
                                quarantine regclass, this_pass integer)
RETURNS pybatch.flush_result
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    hot_before bigint;
    step record;
    agent record;
    failed_agents uuid[] := '{}';
    failed_errors text[] := '{}';
    error_state text;
    error_message text;
    deferred bigint;
    pass_emptied boolean := false;
BEGIN
    result.passes := result.passes + 1;
    -- Counters of this transaction, so a pass counts its own HOT updates.
    hot_before := pg_catalog.pg_stat_get_xact_tuples_hot_updated(agents);

    BEGIN
        SELECT * INTO STRICT step FROM pybatch.merge_pass_in(pending, agents, this_pass, NULL);
        pass_emptied := step.merged = step.picked;  -- every row of the pass merged: none to defer
        result.agents_updated := result.agents_updated + step.updated;
        result.stale_heartbeats := result.stale_heartbeats + step.stale_beats;
        result.newest_event_at := GREATEST(result.newest_event_at, step.newest_event_at);
    EXCEPTION WHEN query_canceled THEN
        -- A cancel or statement_timeout is not one agent's fault: stop, keep all.
        GET STACKED DIAGNOSTICS error_state = RETURNED_SQLSTATE, error_message = MESSAGE_TEXT;
        result.error := error_state || ': ' || error_message;
    WHEN serialization_failure OR deadlock_detected OR lock_not_available THEN
        -- Transient, and not any agent's fault (a concurrent update seen by a
        -- repeatable-read caller, a deadlock, a lock timeout): the pass waits for
        -- the next flush (deferred below) and the rest of this flush goes on.
        NULL;
    WHEN OTHERS THEN
        -- Find who fails: the pass again, one agent at a time.
        FOR agent IN EXECUTE pg_catalog.format('SELECT p.agent_id FROM %s p WHERE p.pass_no = $1', pending)
                     USING this_pass LOOP
            BEGIN
                SELECT * INTO STRICT step FROM pybatch.merge_pass_in(pending, agents, this_pass, agent.agent_id);
                result.agents_updated := result.agents_updated + step.updated;
                result.stale_heartbeats := result.stale_heartbeats + step.stale_beats;
                result.newest_event_at := GREATEST(result.newest_event_at, step.newest_event_at);
            EXCEPTION WHEN serialization_failure OR deadlock_detected OR lock_not_available THEN
                NULL;  -- transient: the agent stays in this pass and is deferred below
            WHEN OTHERS THEN
                GET STACKED DIAGNOSTICS error_state = RETURNED_SQLSTATE, error_message = MESSAGE_TEXT;
                failed_agents := failed_agents || agent.agent_id;
                failed_errors := failed_errors || (error_state || ': ' || error_message);
            END;
        END LOOP;
        -- The failed wait, out of the passes, until the flush is judged (above).
        EXECUTE pg_catalog.format($q$
            UPDATE %s p SET pass_no = NULL, failed_error = ($2)[pg_catalog.array_position($1, p.agent_id)]
            WHERE p.agent_id = ANY ($1)
            $q$, pending) USING failed_agents, failed_errors;
    END;

    IF result.error IS NULL AND NOT pass_emptied THEN
        -- Rows still in this pass were locked by another transaction: next flush.
        EXECUTE pg_catalog.format($q$
            WITH deferred AS (UPDATE %s p SET pass_no = NULL WHERE p.pass_no = $1 RETURNING 1)
            SELECT pg_catalog.count(*) FROM deferred
            $q$, pending) INTO deferred USING this_pass;
        result.deferred_agents := result.deferred_agents + deferred;
    END IF;
    result.hot_updates := result.hot_updates
        + pg_catalog.pg_stat_get_xact_tuples_hot_updated(agents) - hot_before;
    RETURN result;
END
$fn$;
COMMENT ON FUNCTION pybatch.pass_in(pybatch.flush_result, regclass, regclass, regclass, integer) IS
    'Internal: merges the pending rows of one pass_no (at most one row per heap page) on the given relations and adds its figures to result; an agent that fails is kept in pending with its error for the flush''s judgement.';
