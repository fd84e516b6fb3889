-- pybatch 0003: inspection views for psql and dashboards.
-- staging_summary, flush_history, agent_status and health, all readable by pg_monitor.
--
-- UNLOGGED staging cannot be read on a hot standby: even planning a query that
-- names it fails there ("cannot access temporary or unlogged relations during
-- recovery"). So no view names pybatch.heartbeats; they call plpgsql functions
-- that check pg_is_in_recovery() first (plpgsql plans a statement only when it
-- first runs it, so the branch not taken is never planned).
-- depends: 0001_initial

-- ---------------------------------------------------------------------------
-- Staging figures.
-- ---------------------------------------------------------------------------
CREATE FUNCTION pybatch.staging_stats()
RETURNS TABLE (
    available boolean,
    reason text,
    estimated boolean,
    method text,
    rows_staged bigint,
    distinct_agents bigint,
    oldest_beat_at timestamptz,
    newest_beat_at timestamptz,
    oldest_beat_age interval,
    newest_beat_age interval,
    size_bytes bigint
)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- Up to exact_max_pages (8 MB, ~120k-150k rows) every figure is exact: one
    -- scan with a distinct count, ~30 ms. Beyond that an exact scan alone takes
    -- 100-200 ms per million rows on a small server, so the figures come from
    -- a block sample of about sample_pages pages (~30k rows) instead.
    exact_max_pages CONSTANT bigint := 1024;
    sample_pages CONSTANT numeric := 256;
    heap_pages bigint;
    sample_percent numeric;
    sample_size bigint;
    sample_distinct bigint;
    sample_singletons bigint;
    live_counter bigint;
BEGIN
    IF pg_catalog.pg_is_in_recovery() THEN
        available := false;
        reason := 'hot standby: UNLOGGED staging (pybatch.heartbeats) exists only on the primary';
        RETURN NEXT;
        RETURN;
    END IF;
    available := true;
    size_bytes := pg_catalog.pg_total_relation_size('pybatch.heartbeats'::pg_catalog.regclass);
    heap_pages := pg_catalog.pg_relation_size('pybatch.heartbeats'::pg_catalog.regclass)
        / pg_catalog.current_setting('block_size')::bigint;

    IF heap_pages <= exact_max_pages THEN
        estimated := false;
        method := 'exact';
        SELECT pg_catalog.count(*), pg_catalog.count(DISTINCT h.agent_id),
               pg_catalog.min(h.beat_at), pg_catalog.max(h.beat_at)
        INTO rows_staged, distinct_agents, oldest_beat_at, newest_beat_at
        FROM pybatch.heartbeats h;
    ELSE
        estimated := true;
        sample_percent := LEAST(100, 100 * sample_pages / heap_pages);
        method := 'estimate from a ' || pg_catalog.round(sample_percent, 2)::text || ' % block sample';
        SELECT pg_catalog.sum(c.beats), pg_catalog.count(*), pg_catalog.count(*) FILTER (WHERE c.beats = 1),
               pg_catalog.min(c.first_at), pg_catalog.max(c.last_at)
        INTO sample_size, sample_distinct, sample_singletons, oldest_beat_at, newest_beat_at
        FROM (
            SELECT pg_catalog.count(*) AS beats, pg_catalog.min(h.beat_at) AS first_at,
                   pg_catalog.max(h.beat_at) AS last_at
            FROM pybatch.heartbeats h TABLESAMPLE SYSTEM (sample_percent)
            GROUP BY h.agent_id
        ) c;
        sample_size := COALESCE(sample_size, 0);
        -- Each block is in the sample with probability sample_percent: unbiased,
        -- but +-5-10 % from block to block. The statistics' live-tuple counter
        -- (kept per insert and delete, up to ~1 s behind) is closer; it is used
        -- unless a stats reset has made it disagree with the sample by a third.
        rows_staged := pg_catalog.round(sample_size * 100 / sample_percent)::bigint;
        live_counter := pg_catalog.pg_stat_get_live_tuples('pybatch.heartbeats'::pg_catalog.regclass);
        IF live_counter BETWEEN rows_staged * 2 / 3 AND rows_staged * 3 / 2 THEN
            rows_staged := live_counter;
            method := method || ', rows from the live-tuple counter';
        END IF;
        IF sample_size > 0 THEN
            -- Haas-Stokes "Duj1", the estimator ANALYZE uses for n_distinct:
            -- n*d / (n - f1 + f1*n/N), where f1 counts agents seen once in the sample.
            distinct_agents := LEAST(rows_staged, GREATEST(sample_distinct, pg_catalog.round(
                sample_size::numeric * sample_distinct
                / (sample_size - sample_singletons + sample_singletons::numeric * sample_size / rows_staged))::bigint));
        ELSE
            distinct_agents := 0;
        END IF;
    END IF;

    oldest_beat_age := pg_catalog.now() - oldest_beat_at;
    newest_beat_age := pg_catalog.now() - newest_beat_at;
    RETURN NEXT;
END
$$;
COMMENT ON FUNCTION pybatch.staging_stats() IS
    'Backs pybatch.staging_summary: one row of staging figures, or available = false with a reason on a hot standby.';

-- Newest staged beat per agent; no rows on a hot standby (callers check pg_is_in_recovery()).
CREATE FUNCTION pybatch.staged_latest_beats()
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

REVOKE EXECUTE ON FUNCTION pybatch.staging_stats() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pybatch.staged_latest_beats() FROM PUBLIC;

-- ---------------------------------------------------------------------------
-- Views.
-- ---------------------------------------------------------------------------
CREATE VIEW pybatch.staging_summary AS
SELECT s.available, s.reason, s.estimated, s.method, s.rows_staged, s.distinct_agents,
       s.oldest_beat_at, s.newest_beat_at, s.oldest_beat_age, s.newest_beat_age, s.size_bytes
FROM pybatch.staging_stats() s;
COMMENT ON VIEW pybatch.staging_summary IS
    'One row: what waits in staging (pybatch.heartbeats). Exact while staging is small (up to 8 MB); beyond that rows_staged, distinct_agents and the oldest/newest beats are estimates (from a block sample; rows_staged from the statistics live-tuple counter when the sample agrees) and estimated is true. On a hot standby available is false, reason says why and the figures are NULL.';
COMMENT ON COLUMN pybatch.staging_summary.available IS 'False on a hot standby, where UNLOGGED staging cannot be read.';
COMMENT ON COLUMN pybatch.staging_summary.reason IS 'Why the figures are NULL; NULL when available.';
COMMENT ON COLUMN pybatch.staging_summary.estimated IS 'True when rows_staged, distinct_agents and the oldest/newest beats are sample estimates (staging over 8 MB).';
COMMENT ON COLUMN pybatch.staging_summary.method IS '"exact", or how the estimates were made (block sample size; whether rows_staged is the live-tuple counter).';
COMMENT ON COLUMN pybatch.staging_summary.rows_staged IS 'Heartbeats waiting for the next flush (an estimate when estimated).';
COMMENT ON COLUMN pybatch.staging_summary.distinct_agents IS 'Agents with a staged heartbeat (an estimate when estimated).';
COMMENT ON COLUMN pybatch.staging_summary.oldest_beat_at IS 'Oldest staged beat_at (when estimated: the oldest in the sample, never older than the true one).';
COMMENT ON COLUMN pybatch.staging_summary.newest_beat_at IS 'Newest staged beat_at (when estimated: the newest in the sample).';
COMMENT ON COLUMN pybatch.staging_summary.oldest_beat_age IS 'now() - oldest_beat_at: how long the oldest heartbeat has waited.';
COMMENT ON COLUMN pybatch.staging_summary.newest_beat_age IS 'now() - newest_beat_at: how long ago the newest heartbeat was staged.';
COMMENT ON COLUMN pybatch.staging_summary.size_bytes IS 'On-disk size of the staging table, dead tuples included (exact).';

CREATE VIEW pybatch.flush_history AS
SELECT l.id AS flush_id,
       l.started_at,
       l.started_at + l.duration AS finished_at,
       l.error IS NULL AS succeeded,
       l.rows_staged,
       l.agents_updated,
       l.stale_heartbeats,
       l.unknown_heartbeats,
       l.future_heartbeats,
       l.duration,
       l.error
FROM pybatch.flush_log l
ORDER BY l.started_at DESC, l.id DESC;
COMMENT ON VIEW pybatch.flush_history IS
    'Recent flushes (kept for settings.history_retention), newest first; add LIMIT for the last few. Failed flushes have succeeded = false and the error.';
COMMENT ON COLUMN pybatch.flush_history.flush_id IS 'pybatch.flush_log.id.';
COMMENT ON COLUMN pybatch.flush_history.started_at IS 'When the flush started.';
COMMENT ON COLUMN pybatch.flush_history.finished_at IS 'When the flush ended (started_at + duration).';
COMMENT ON COLUMN pybatch.flush_history.succeeded IS 'False when the flush failed, rolled back and kept staging.';
COMMENT ON COLUMN pybatch.flush_history.rows_staged IS 'Staged heartbeats the flush drained.';
COMMENT ON COLUMN pybatch.flush_history.agents_updated IS 'workspace_agents rows the flush changed.';
COMMENT ON COLUMN pybatch.flush_history.stale_heartbeats IS 'Heartbeats older than what workspace_agents already held (changed nothing).';
COMMENT ON COLUMN pybatch.flush_history.unknown_heartbeats IS 'Heartbeats for agent ids not in workspace_agents (dropped).';
COMMENT ON COLUMN pybatch.flush_history.future_heartbeats IS 'Heartbeats dated beyond settings.future_tolerance (dropped).';
COMMENT ON COLUMN pybatch.flush_history.duration IS 'How long the flush took.';
COMMENT ON COLUMN pybatch.flush_history.error IS 'SQLSTATE and message of a failed flush; NULL on success.';

-- Coder's status rules (FACTS.md), in order; a NULL time compares like Go's zero time.
CREATE VIEW pybatch.agent_status AS
SELECT wa.id AS agent_id,
       CASE
           WHEN wa.first_connected_at IS NULL THEN
               CASE WHEN wa.connection_timeout_seconds > 0
                         AND pg_catalog.now() - wa.created_at
                             > pg_catalog.make_interval(secs => wa.connection_timeout_seconds)
                    THEN 'timeout' ELSE 'connecting' END
           WHEN COALESCE(wa.disconnected_at, '-infinity') >= COALESCE(wa.last_connected_at, '-infinity')
               THEN 'disconnected'
           WHEN wa.last_connected_at IS NULL
                OR pg_catalog.now() - wa.last_connected_at > s.inactive_timeout
               THEN 'disconnected'
           ELSE 'connected'
       END AS status,
       wa.created_at,
       wa.first_connected_at,
       wa.last_connected_at,
       wa.disconnected_at,
       wa.connection_timeout_seconds,
       b.latest_beat_at AS staged_beat_at,
       CASE WHEN pg_catalog.pg_is_in_recovery() THEN NULL
            ELSE COALESCE(b.latest_beat_at > COALESCE(wa.last_connected_at, '-infinity'), false)
       END AS newer_heartbeat_staged
FROM public.workspace_agents wa
CROSS JOIN pybatch.settings s
LEFT JOIN pybatch.staged_latest_beats() b ON b.agent_id = wa.id;
COMMENT ON VIEW pybatch.agent_status IS
    'One row per agent of public.workspace_agents with Coder''s status (connecting, connected, disconnected, timeout) using settings.inactive_timeout, and whether a newer heartbeat still waits in staging (the answer to "why does this agent look stale?"). Reads all of staging once per query.';
COMMENT ON COLUMN pybatch.agent_status.agent_id IS 'public.workspace_agents.id.';
COMMENT ON COLUMN pybatch.agent_status.status IS 'connecting, connected, disconnected or timeout, by Coder''s rules.';
COMMENT ON COLUMN pybatch.agent_status.created_at IS 'workspace_agents.created_at.';
COMMENT ON COLUMN pybatch.agent_status.first_connected_at IS 'workspace_agents.first_connected_at.';
COMMENT ON COLUMN pybatch.agent_status.last_connected_at IS 'workspace_agents.last_connected_at (as of the last flush).';
COMMENT ON COLUMN pybatch.agent_status.disconnected_at IS 'workspace_agents.disconnected_at.';
COMMENT ON COLUMN pybatch.agent_status.connection_timeout_seconds IS 'workspace_agents.connection_timeout_seconds (0: no timeout).';
COMMENT ON COLUMN pybatch.agent_status.staged_beat_at IS 'Newest heartbeat of this agent still in staging; NULL if none (or on a hot standby).';
COMMENT ON COLUMN pybatch.agent_status.newer_heartbeat_staged IS 'True when staging holds a heartbeat newer than last_connected_at: the next flush will move it. NULL on a hot standby.';

CREATE VIEW pybatch.health AS
WITH cfg AS (
    SELECT s.flush_interval FROM pybatch.settings s
), last_success AS (
    SELECT l.started_at + l.duration AS finished_at
    FROM pybatch.flush_log l
    WHERE l.error IS NULL
    ORDER BY l.started_at DESC
    LIMIT 1
), last_failure AS (
    SELECT l.started_at + l.duration AS finished_at, l.error
    FROM pybatch.flush_log l
    WHERE l.error IS NOT NULL
    ORDER BY l.started_at DESC
    LIMIT 1
), judged AS (
    SELECT cfg.flush_interval,
           ok.finished_at AS last_success_at,
           pg_catalog.now() - ok.finished_at AS last_success_age,
           bad.finished_at AS last_failure_at,
           bad.error AS last_error
    FROM cfg
    LEFT JOIN last_success ok ON true
    LEFT JOIN last_failure bad ON true
)
SELECT j.last_success_at,
       j.last_success_age,
       j.flush_interval,
       CASE
           WHEN j.last_success_at IS NULL THEN 'stalled'
           WHEN j.last_success_age <= 2 * j.flush_interval THEN 'ok'
           WHEN j.last_success_age <= 5 * j.flush_interval THEN 'late'
           ELSE 'stalled'
       END AS status,
       CASE
           WHEN j.last_success_at IS NULL THEN
               'no successful flush recorded in pybatch.flush_log'
               || CASE WHEN j.last_error IS NOT NULL THEN '; last flush failed: ' || j.last_error
                       ELSE '; is a scheduler running (pg_cron job or `pybatch scheduler`)?' END
           WHEN j.last_success_age <= 2 * j.flush_interval THEN
               'last successful flush ' || pg_catalog.round(EXTRACT(EPOCH FROM j.last_success_age), 1)::text || ' s'
               || ' ago, within 2 flush intervals'
           ELSE
               'last successful flush ' || pg_catalog.round(EXTRACT(EPOCH FROM j.last_success_age), 1)::text || ' s'
               || ' ago, over ' || CASE WHEN j.last_success_age <= 5 * j.flush_interval THEN '2' ELSE '5' END
               || ' flush intervals of ' || j.flush_interval::text
               || CASE WHEN j.last_failure_at > j.last_success_at THEN '; last flush failed: ' || j.last_error
                       ELSE '; is a scheduler running (pg_cron job or `pybatch scheduler`)?' END
       END AS reason,
       j.last_failure_at,
       j.last_error
FROM judged j;
COMMENT ON VIEW pybatch.health IS
    'One row: is flushing keeping up? status ok (last success within 2 flush intervals), late (within 5) or stalled (older, or never), with a reason. Usable as a liveness check, also on a hot standby.';
COMMENT ON COLUMN pybatch.health.last_success_at IS 'When the last successful flush ended; NULL if none is recorded.';
COMMENT ON COLUMN pybatch.health.last_success_age IS 'now() - last_success_at.';
COMMENT ON COLUMN pybatch.health.flush_interval IS 'settings.flush_interval, the yardstick for late and stalled.';
COMMENT ON COLUMN pybatch.health.status IS 'ok, late or stalled.';
COMMENT ON COLUMN pybatch.health.reason IS 'Why the status is what it is, for people.';
COMMENT ON COLUMN pybatch.health.last_failure_at IS 'When the last failed flush ended; NULL if none is recorded.';
COMMENT ON COLUMN pybatch.health.last_error IS 'Error of the last failed flush.';

-- ---------------------------------------------------------------------------
-- Monitoring access: pg_monitor reads the views (they run with the owner's
-- rights on tables; the staging functions are SECURITY DEFINER).
-- ---------------------------------------------------------------------------
GRANT USAGE ON SCHEMA pybatch TO pg_monitor;
GRANT SELECT ON pybatch.staging_summary, pybatch.flush_history, pybatch.agent_status, pybatch.health TO pg_monitor;
GRANT SELECT ON pybatch.settings TO pg_monitor;  -- the yardsticks the views use
GRANT EXECUTE ON FUNCTION pybatch.staging_stats(), pybatch.staged_latest_beats() TO pg_monitor;
