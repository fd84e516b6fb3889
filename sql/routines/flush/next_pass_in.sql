-- ---------------------------------------------------------------------------
-- The next pass, on any set of relations: the lowest pass_no, merged by
-- pass_in(). When no pass is left the flush is judged as a whole: if anything
-- merged, the agents that failed go to quarantine (their own fault, whatever
-- the fleet size or row cap); if nothing merged at all, the failure is
-- systemic: the flush reports it and every agent stays pending.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pybatch.next_pass_in(result pybatch.flush_result, pending regclass, agents regclass,
                                     quarantine regclass)
RETURNS pybatch.flush_result
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    this_pass integer;
    failed_agents uuid[] := '{}';
    failed_errors text[] := '{}';
    retry_first timestamptz;
BEGIN
    EXECUTE pg_catalog.format('SELECT pg_catalog.min(p.pass_no) FROM %s p', pending) INTO this_pass;
    IF this_pass IS NULL THEN
        -- Nothing left: passes does not grow and the caller stops. Judge the failures.
        EXECUTE pg_catalog.format($q$
            SELECT COALESCE(pg_catalog.array_agg(p.agent_id), '{}'), COALESCE(pg_catalog.array_agg(p.failed_error), '{}')
            FROM %s p WHERE p.failed_error IS NOT NULL
            $q$, pending) INTO failed_agents, failed_errors;
        IF pg_catalog.cardinality(failed_agents) = 0 THEN
            RETURN result;
        END IF;
        IF result.agents_updated + result.stale_heartbeats = 0 THEN
            -- Nothing merged in this whole flush: no agent's own fault. All stay pending.
            result.error := failed_errors[1];
            EXECUTE pg_catalog.format('UPDATE %s p SET failed_error = NULL WHERE p.failed_error IS NOT NULL', pending);
            RETURN result;
        END IF;
        retry_first := pg_catalog.clock_timestamp();  -- computed first: no volatile call in the DML
        EXECUTE pg_catalog.format($q$
        WITH moved AS (
            DELETE FROM %1$s p WHERE p.agent_id = ANY ($1)
            RETURNING p.agent_id, p.first_at, p.last_at, p.replica_id, p.beats, p.failed_error
        )
        INSERT INTO %2$s AS q (agent_id, first_at, last_at, replica_id, beats, error, retry_at)
        SELECT m.agent_id, m.first_at, m.last_at, m.replica_id, m.beats, m.failed_error,
               $2 + interval '10 seconds'
        FROM moved m
        ON CONFLICT (agent_id) DO UPDATE SET
            first_at = LEAST(q.first_at, excluded.first_at),
            last_at = GREATEST(q.last_at, excluded.last_at),
            replica_id = CASE
                WHEN excluded.last_at > q.last_at THEN excluded.replica_id
                WHEN excluded.last_at = q.last_at THEN GREATEST(q.replica_id, excluded.replica_id)
                ELSE q.replica_id
            END,
            beats = q.beats + excluded.beats,
            error = excluded.error,
            attempts = q.attempts + 1,
            -- Back-off: 10 s, 20 s, 40 s, ... at most 1 h.
            retry_at = $2 + LEAST(interval '1 hour', interval '10 seconds' * (2 ^ LEAST(q.attempts, 12)))
        $q$, pending, quarantine) USING failed_agents, retry_first;
        result.quarantined_agents := result.quarantined_agents + pg_catalog.cardinality(failed_agents);
        RETURN result;
    END IF;
    RETURN pybatch.pass_in(result, pending, agents, quarantine, this_pass);
END
$fn$;
COMMENT ON FUNCTION pybatch.next_pass_in(pybatch.flush_result, regclass, regclass, regclass) IS
    'Internal: merges the pending rows of the lowest pass_no on the given relations (flush_pass() here, shard_pass() on a Citus shard group) and adds its figures to result; when no pass is left, agents that failed go to quarantine if anything merged.';
