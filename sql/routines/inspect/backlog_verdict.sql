-- ---------------------------------------------------------------------------
-- behind: flushes succeed on time but do not keep up.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pybatch.backlog_verdict()
RETURNS TABLE (behind boolean, reason text)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cfg pybatch.settings;
    last_drained bigint;
    last_duration interval;
    waiting bigint;
    stuck_agents bigint;
    oldest timestamptz;
    patience interval;
BEGIN
    IF pg_catalog.pg_is_in_recovery() THEN
        RETURN QUERY SELECT NULL::boolean, 'hot standby: staging and pending exist only on the primary'::text;
        RETURN;
    END IF;
    SELECT * INTO STRICT cfg FROM pybatch.settings;
    SELECT l.rows_staged, l.duration INTO last_drained, last_duration
    FROM pybatch.flush_log l WHERE l.error IS NULL AND l.completed_at IS NOT NULL
    ORDER BY l.started_at DESC, l.id DESC LIMIT 1;

    -- 1. The last flush drained its cap and at least a cap's worth still waits:
    --    the next flush is capped too (the backlog grew, or is still being worked off).
    IF cfg.max_rows_per_flush IS NOT NULL AND last_drained >= cfg.max_rows_per_flush THEN
        SELECT pg_catalog.count(*) INTO waiting
        FROM (SELECT FROM pybatch.heartbeats h LIMIT cfg.max_rows_per_flush) s;
        IF waiting >= cfg.max_rows_per_flush THEN
            RETURN QUERY SELECT true,
                'the last flush drained its cap of ' || cfg.max_rows_per_flush::text
                || ' heartbeats (max_rows_per_flush) and at least as many still wait in staging: flushes are not keeping up';
            RETURN;
        END IF;
    END IF;

    -- 2. Beats handed off to pybatch.pending wait longer than a flush needs to
    --    merge them (two intervals + the client's write interval + the last flush's
    --    duration): deferred again and again because an app keeps their rows locked.
    patience := 2 * cfg.flush_interval + cfg.client_write_interval + COALESCE(last_duration, interval '0');
    SELECT pg_catalog.count(*), pg_catalog.min(p.first_at) INTO stuck_agents, oldest
    FROM pybatch.pending p WHERE p.first_at < pg_catalog.now() - patience;
    IF stuck_agents > 0 THEN
        RETURN QUERY SELECT true,
            stuck_agents::text || ' agent(s) in pybatch.pending have waited up to '
            || pybatch.seconds_text(pg_catalog.now() - oldest) || ' (over ' || pybatch.seconds_text(patience)
            || ') to be merged: their rows are kept locked by another transaction (see pg_locks on public.workspace_agents)';
        RETURN;
    END IF;
    RETURN QUERY SELECT false, NULL::text;
END
$$;
COMMENT ON FUNCTION pybatch.backlog_verdict() IS
    'Backs pybatch.health''s behind: true when the last successful flush drained max_rows_per_flush and at least as many still wait in staging, or when rows in pybatch.pending have waited over 2 flush intervals + client_write_interval + the last flush''s duration. NULL on a hot standby.';
REVOKE EXECUTE ON FUNCTION pybatch.backlog_verdict() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pybatch.backlog_verdict() TO pg_monitor;
