-- ---------------------------------------------------------------------------
-- staged_latest_beats: the newest staged beat per agent, for
-- pybatch.agent_status; no rows on a hot standby (callers check
-- pg_is_in_recovery()).
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pybatch.staged_latest_beats()
RETURNS TABLE (agent_id uuid, latest_beat_at timestamptz)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF pg_catalog.pg_is_in_recovery() THEN
        RETURN;
    END IF;
    RETURN QUERY
        SELECT h.agent_id, pg_catalog.max(h.beat_at)
        FROM pybatch.heartbeats h
        GROUP BY h.agent_id;
END
$$;
COMMENT ON FUNCTION pybatch.staged_latest_beats() IS
    'Backs pybatch.agent_status: the newest staged heartbeat of each agent with one in staging (none on a hot standby).';
REVOKE EXECUTE ON FUNCTION pybatch.staged_latest_beats() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pybatch.staged_latest_beats() TO pg_monitor;
