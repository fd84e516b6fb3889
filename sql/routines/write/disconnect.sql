-- ---------------------------------------------------------------------------
-- disconnect(): the direct write. updated_at is the disconnect's own time, never
-- backwards; the values are computed before the UPDATE (no volatile call in it).
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pybatch.disconnect(agent_id uuid, at timestamptz DEFAULT pg_catalog.now())
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    tolerance interval;
    server_now timestamptz := pg_catalog.clock_timestamp();
BEGIN
    IF disconnect.agent_id IS NULL THEN
        RAISE EXCEPTION 'pybatch.disconnect: agent_id must not be NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF disconnect.at IS NULL THEN
        RAISE EXCEPTION 'pybatch.disconnect: at must not be NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF NOT pg_catalog.isfinite(disconnect.at) THEN
        RAISE EXCEPTION 'pybatch.disconnect: at must be a finite time, not %', disconnect.at
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Never as anyone but the table's owner (after the table changed hands, say).
    PERFORM pybatch.check_merge_routines();
    SELECT s.future_tolerance INTO STRICT tolerance FROM pybatch.settings s;
    IF disconnect.at > server_now + tolerance THEN
        RAISE EXCEPTION 'pybatch.disconnect: time % is ahead of the server clock (%) by more than future_tolerance %',
            disconnect.at, server_now, tolerance
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- A disconnect older than the newest merged heartbeat changes nothing; a
    -- newer one than the recorded disconnect replaces it.
    UPDATE public.workspace_agents wa
    SET disconnected_at = disconnect.at,
        updated_at = GREATEST(wa.updated_at, disconnect.at)
    WHERE wa.id = disconnect.agent_id
      AND (wa.last_connected_at IS NULL OR disconnect.at >= wa.last_connected_at)
      AND (wa.disconnected_at IS NULL OR disconnect.at > wa.disconnected_at);
    IF FOUND THEN
        RETURN true;
    END IF;
    IF NOT EXISTS (SELECT FROM public.workspace_agents wa WHERE wa.id = disconnect.agent_id) THEN
        RAISE EXCEPTION 'pybatch.disconnect: no agent % in public.workspace_agents', disconnect.agent_id
            USING ERRCODE = 'no_data_found';
    END IF;
    RETURN false;
END
$$;
COMMENT ON FUNCTION pybatch.disconnect(uuid, timestamptz) IS
    'Marks an agent disconnected at once (bypasses staging). Returns true if the row changed, false if a newer heartbeat or disconnect already stands. Raises for a NULL argument, an unknown agent or a time beyond future_tolerance.';
REVOKE EXECUTE ON FUNCTION pybatch.disconnect(uuid, timestamptz) FROM PUBLIC;
