-- ---------------------------------------------------------------------------
-- pending and quarantine at a glance. pybatch.pending is UNLOGGED, so on a hot
-- standby its figures are NULL; quarantine is a logged table and always read.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pybatch.pending_stats()
RETURNS TABLE (
    pending_agents bigint,
    pending_beats bigint,
    deferred_agents bigint,
    oldest_pending_at timestamptz,
    quarantined_agents bigint,
    quarantined_beats bigint,
    oldest_quarantined_at timestamptz,
    quarantine_next_retry_at timestamptz,
    quarantine_sample_agent uuid,
    quarantine_sample_error text
)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT pg_catalog.pg_is_in_recovery() THEN
        SELECT pg_catalog.count(*), COALESCE(pg_catalog.sum(p.beats), 0),
               pg_catalog.count(*) FILTER (WHERE p.pass_no IS NULL), pg_catalog.min(p.first_at)
        INTO pending_agents, pending_beats, deferred_agents, oldest_pending_at
        FROM pybatch.pending p;
    END IF;
    SELECT pg_catalog.count(*), COALESCE(pg_catalog.sum(q.beats), 0),
           pg_catalog.min(q.quarantined_at), pg_catalog.min(q.retry_at)
    INTO quarantined_agents, quarantined_beats, oldest_quarantined_at, quarantine_next_retry_at
    FROM pybatch.quarantine q;
    -- The sample: the agent quarantined longest, with its last error.
    SELECT q.agent_id, q.error INTO quarantine_sample_agent, quarantine_sample_error
    FROM pybatch.quarantine q ORDER BY q.quarantined_at, q.agent_id LIMIT 1;
    RETURN NEXT;
END
$$;
COMMENT ON FUNCTION pybatch.pending_stats() IS
    'Backs the pending and quarantine columns of pybatch.staging_summary: one row (pending figures NULL on a hot standby).';
REVOKE EXECUTE ON FUNCTION pybatch.pending_stats() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pybatch.pending_stats() TO pg_monitor;
