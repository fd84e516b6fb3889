-- ---------------------------------------------------------------------------
-- pending_latest_beats: the newest pending beat per agent, for
-- pybatch.agent_status; no rows on a hot standby.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pybatch.pending_latest_beats()
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
    RETURN QUERY SELECT p.agent_id, p.last_at FROM pybatch.pending p;
END
$$;
COMMENT ON FUNCTION pybatch.pending_latest_beats() IS
    'Backs pybatch.agent_status: the newest beat of each agent handed off to pybatch.pending and not merged yet (none on a hot standby).';
REVOKE EXECUTE ON FUNCTION pybatch.pending_latest_beats() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pybatch.pending_latest_beats() TO pg_monitor;
