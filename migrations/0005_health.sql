-- pybatch 0005: health you can act on.
--
-- - The staleness budget (issue 11 #10): Coder marks an agent disconnected
--   inactive_timeout (30 s) after its last_connected_at. A beat can reach the row
--   as late as heartbeat period + client write interval + flush interval + the
--   flush's own duration after the one before it. Two settings describe the
--   parts pybatch cannot see (heartbeat_period, client_write_interval) and
--   pybatch.staleness_budget() adds them up, with the measured flush duration,
--   for doctor, `config set` and `cron install`.
-- - health: `behind` (a capped flush left at least a cap's worth, or pending rows
--   wait too long), the measured worst staleness, and who holds pybatch.flush_lock.
-- - What the passes hand off: staging_summary and agent_status include
--   pybatch.pending (handed off, not merged yet) and pybatch.quarantine.
-- - flush_history shows 0004's per-flush figures; pybatch.table_shape() measures
--   the target table for doctor.
-- Views are changed with CREATE OR REPLACE and only gain columns at the end.
-- depends: 0004_flush_passes

-- ---------------------------------------------------------------------------
-- Settings: the parts of the staleness budget outside PostgreSQL.
-- ---------------------------------------------------------------------------
ALTER TABLE pybatch.settings
    ADD COLUMN heartbeat_period interval NOT NULL DEFAULT interval '15 seconds',
    ADD COLUMN client_write_interval interval NOT NULL DEFAULT interval '1 second',
    ADD CONSTRAINT settings_heartbeat_period_range
        CHECK (heartbeat_period BETWEEN interval '1 second' AND interval '1 hour'),
    ADD CONSTRAINT settings_client_write_interval_range
        CHECK (client_write_interval BETWEEN interval '0' AND interval '1 hour');
COMMENT ON COLUMN pybatch.settings.heartbeat_period IS
    'How often each agent''s heartbeat is written (Coder: AgentConnectionUpdateFrequency, 15 s). 1 s to 1 h. Part of the staleness budget (pybatch.staleness_budget()).';
COMMENT ON COLUMN pybatch.settings.client_write_interval IS
    'How long a beat may wait in a client before it reaches staging (HeartbeatClient write_interval, 1 s by default; 0 for immediate mode). 0 to 1 h. Part of the staleness budget.';

-- ---------------------------------------------------------------------------
-- A duration for people: "12.3 s".
-- ---------------------------------------------------------------------------
CREATE FUNCTION pybatch.seconds_text(duration interval)
RETURNS text
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.round(EXTRACT(EPOCH FROM duration), 1)::text || ' s';
$$;
COMMENT ON FUNCTION pybatch.seconds_text(interval) IS
    'Internal: an interval as seconds with one decimal ("12.3 s"), for the reasons the views give.';

-- ---------------------------------------------------------------------------
-- The staleness budget. NULL arguments take the stored settings, so a caller can
-- ask "what if flush_interval were 25 s?" before storing it.
-- ---------------------------------------------------------------------------
CREATE FUNCTION pybatch.staleness_budget(new_flush_interval interval DEFAULT NULL,
                                         new_heartbeat_period interval DEFAULT NULL,
                                         new_client_write_interval interval DEFAULT NULL,
                                         new_inactive_timeout interval DEFAULT NULL)
RETURNS TABLE (
    heartbeat_period interval,
    client_write_interval interval,
    flush_interval interval,
    flush_duration interval,
    flush_duration_measured boolean,
    worst_staleness interval,
    inactive_timeout interval,
    margin interval,
    max_flush_interval interval,
    verdict text,
    allowed boolean,
    reason text
)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH cfg AS (
        SELECT COALESCE(new_heartbeat_period, s.heartbeat_period) AS period,
               COALESCE(new_client_write_interval, s.client_write_interval) AS write_interval,
               COALESCE(new_flush_interval, s.flush_interval) AS flush_interval,
               COALESCE(new_inactive_timeout, s.inactive_timeout) AS timeout
        FROM pybatch.settings s
    ), measured AS (
        -- The flush's own duration: the longest of the last 20 successful flushes.
        SELECT pg_catalog.max(r.duration) AS duration
        FROM (SELECT l.duration FROM pybatch.flush_log l WHERE l.error IS NULL
              ORDER BY l.started_at DESC LIMIT 20) r
    ), parts AS (
        SELECT c.*,
               COALESCE(m.duration, interval '1 second') AS duration,  -- assumed until one is measured
               m.duration IS NOT NULL AS measured,
               GREATEST(interval '2 seconds', c.timeout / 5) AS margin
        FROM cfg c CROSS JOIN measured m
    ), summed AS (
        SELECT p.*,
               p.period + p.write_interval + p.flush_interval + p.duration AS worst,
               p.timeout - p.margin - (p.period + p.write_interval + p.duration) AS room
        FROM parts p
    ), judged AS (
        SELECT s.*,
               CASE WHEN s.worst <= s.timeout - s.margin THEN 'ok'
                    WHEN s.worst <= s.timeout THEN 'tight'
                    ELSE 'exceeds' END AS verdict
        FROM summed s
    )
    SELECT j.period, j.write_interval, j.flush_interval, j.duration, j.measured, j.worst, j.timeout,
           j.margin,
           CASE WHEN j.room > interval '0' THEN j.room END,
           j.verdict,
           j.verdict <> 'exceeds',
           'heartbeat period ' || pybatch.seconds_text(j.period)
           || ' + client write interval ' || pybatch.seconds_text(j.write_interval)
           || ' + flush interval ' || pybatch.seconds_text(j.flush_interval)
           || ' + flush duration ' || pybatch.seconds_text(j.duration)
           || CASE WHEN j.measured THEN ' (longest of the last 20 flushes)' ELSE ' (assumed: no flush measured yet)' END
           || ' = ' || pybatch.seconds_text(j.worst)
           || CASE j.verdict
                  WHEN 'ok' THEN ', within inactive_timeout ' || pybatch.seconds_text(j.timeout)
                                 || ' with a margin of at least ' || pybatch.seconds_text(j.margin)
                  WHEN 'tight' THEN ', within inactive_timeout ' || pybatch.seconds_text(j.timeout)
                                 || ' but with less than the ' || pybatch.seconds_text(j.margin)
                                 || ' margin: a slow flush or clock skew makes healthy agents look disconnected'
                  ELSE ', over inactive_timeout ' || pybatch.seconds_text(j.timeout)
                       || ': healthy agents will show as disconnected'
              END
           || CASE WHEN j.verdict = 'ok' THEN ''
                   WHEN j.room > interval '0' THEN '; use a flush_interval of at most ' || pybatch.seconds_text(j.room)
                   ELSE '; no flush_interval fits: shorten heartbeat_period or client_write_interval, '
                        'or raise inactive_timeout' END
    FROM judged j;
$$;
COMMENT ON FUNCTION pybatch.staleness_budget(interval, interval, interval, interval) IS
    'The staleness budget: heartbeat_period + client_write_interval + flush_interval + the flush''s duration (the longest of the last 20 successful flushes; 1 s assumed before any) is how stale last_connected_at can get, against inactive_timeout. verdict ok (within, with margin = max(2 s, inactive_timeout / 5)), tight (within, less margin) or exceeds; allowed = verdict <> exceeds (what `config set` and `cron install` require). NULL arguments take the stored settings; pass new_flush_interval (etc.) to judge a value before storing it. max_flush_interval: the longest flush_interval that keeps the margin (NULL: none does).';

-- The budget for the stored settings, as a view: monitoring roles (pg_monitor, and
-- `pybatch grant reader`, which covers the functions views call) read it.
CREATE VIEW pybatch.staleness AS
SELECT b.heartbeat_period, b.client_write_interval, b.flush_interval, b.flush_duration,
       b.flush_duration_measured, b.worst_staleness, b.inactive_timeout, b.margin, b.max_flush_interval,
       b.verdict, b.allowed, b.reason
FROM pybatch.staleness_budget() b;
COMMENT ON VIEW pybatch.staleness IS
    'One row: pybatch.staleness_budget() for the stored settings (how stale last_connected_at can get, against inactive_timeout).';
COMMENT ON COLUMN pybatch.staleness.heartbeat_period IS 'settings.heartbeat_period.';
COMMENT ON COLUMN pybatch.staleness.client_write_interval IS 'settings.client_write_interval.';
COMMENT ON COLUMN pybatch.staleness.flush_interval IS 'settings.flush_interval.';
COMMENT ON COLUMN pybatch.staleness.flush_duration IS 'The longest of the last 20 successful flushes (1 s assumed before any).';
COMMENT ON COLUMN pybatch.staleness.flush_duration_measured IS 'False while no flush is recorded (flush_duration is assumed).';
COMMENT ON COLUMN pybatch.staleness.worst_staleness IS 'The sum of the four parts: the worst last_connected_at staleness they allow.';
COMMENT ON COLUMN pybatch.staleness.inactive_timeout IS 'settings.inactive_timeout: Coder calls an agent disconnected past it.';
COMMENT ON COLUMN pybatch.staleness.margin IS 'The margin verdict ok requires: max(2 s, inactive_timeout / 5).';
COMMENT ON COLUMN pybatch.staleness.max_flush_interval IS 'The longest flush_interval that keeps the margin; NULL when none does.';
COMMENT ON COLUMN pybatch.staleness.verdict IS 'ok, tight (within inactive_timeout, less than the margin) or exceeds.';
COMMENT ON COLUMN pybatch.staleness.allowed IS 'False when verdict is exceeds: `config set` and `cron install` refuse such values.';
COMMENT ON COLUMN pybatch.staleness.reason IS 'The sum spelled out, and what to change, for people.';
REVOKE EXECUTE ON FUNCTION pybatch.staleness_budget(interval, interval, interval, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pybatch.staleness_budget(interval, interval, interval, interval) TO pg_monitor;
GRANT SELECT ON pybatch.staleness TO pg_monitor;

-- ---------------------------------------------------------------------------
-- pending and quarantine at a glance. pybatch.pending is UNLOGGED, so on a hot
-- standby its figures are NULL; quarantine is a logged table and always read.
-- ---------------------------------------------------------------------------
CREATE FUNCTION pybatch.pending_stats()
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

-- Newest pending beat per agent; no rows on a hot standby.
CREATE FUNCTION pybatch.pending_latest_beats()
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

REVOKE EXECUTE ON FUNCTION pybatch.pending_stats() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pybatch.pending_latest_beats() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pybatch.pending_stats(), pybatch.pending_latest_beats() TO pg_monitor;

CREATE OR REPLACE VIEW pybatch.staging_summary AS
SELECT s.available, s.reason, s.estimated, s.method, s.rows_staged, s.distinct_agents,
       s.oldest_beat_at, s.newest_beat_at, s.oldest_beat_age, s.newest_beat_age, s.size_bytes,
       p.pending_agents, p.pending_beats, p.deferred_agents, p.oldest_pending_at,
       pg_catalog.now() - p.oldest_pending_at AS oldest_pending_age,
       p.quarantined_agents, p.quarantined_beats, p.oldest_quarantined_at, p.quarantine_next_retry_at,
       p.quarantine_sample_agent, p.quarantine_sample_error
FROM pybatch.staging_stats() s
CROSS JOIN pybatch.pending_stats() p;
COMMENT ON VIEW pybatch.staging_summary IS
    'One row: what waits to be merged. Staging (pybatch.heartbeats): exact while small (up to 8 MB), else estimates (estimated is true). pybatch.pending: beats a flush handed off and has not merged yet (deferred: the agent''s row was locked, they wait for the next flush). pybatch.quarantine: agents whose merge failed alone. On a hot standby available is false and the staging and pending figures are NULL.';
COMMENT ON COLUMN pybatch.staging_summary.pending_agents IS 'Agents in pybatch.pending: handed off by a flush, not merged yet (normally 0 between flushes). NULL on a hot standby.';
COMMENT ON COLUMN pybatch.staging_summary.pending_beats IS 'Heartbeats those pending rows stand for.';
COMMENT ON COLUMN pybatch.staging_summary.deferred_agents IS 'Pending agents deferred to the next flush because another transaction held their row locked.';
COMMENT ON COLUMN pybatch.staging_summary.oldest_pending_at IS 'Oldest beat among pending rows.';
COMMENT ON COLUMN pybatch.staging_summary.oldest_pending_age IS 'now() - oldest_pending_at.';
COMMENT ON COLUMN pybatch.staging_summary.quarantined_agents IS 'Agents in pybatch.quarantine: their merge failed alone; their beats are kept and retried.';
COMMENT ON COLUMN pybatch.staging_summary.quarantined_beats IS 'Heartbeats kept in quarantine.';
COMMENT ON COLUMN pybatch.staging_summary.oldest_quarantined_at IS 'When the longest-quarantined agent went there.';
COMMENT ON COLUMN pybatch.staging_summary.quarantine_next_retry_at IS 'When the next quarantined agent is retried (SELECT pybatch.requeue_quarantined() retries all now).';
COMMENT ON COLUMN pybatch.staging_summary.quarantine_sample_agent IS 'The longest-quarantined agent.';
COMMENT ON COLUMN pybatch.staging_summary.quarantine_sample_error IS 'Its last merge error (SQLSTATE: message).';

-- ---------------------------------------------------------------------------
-- agent_status: a beat handed off to pending is as "newer" as a staged one.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE VIEW pybatch.agent_status AS
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
            ELSE COALESCE(GREATEST(b.latest_beat_at, p.latest_beat_at)
                          > COALESCE(wa.last_connected_at, '-infinity'), false)
       END AS newer_heartbeat_staged,
       p.latest_beat_at AS pending_beat_at,
       q.last_at AS quarantined_beat_at,
       q.error AS quarantine_error,
       q.retry_at AS quarantine_retry_at
FROM public.workspace_agents wa
CROSS JOIN pybatch.settings s
LEFT JOIN pybatch.staged_latest_beats() b ON b.agent_id = wa.id
LEFT JOIN pybatch.pending_latest_beats() p ON p.agent_id = wa.id
LEFT JOIN pybatch.quarantine q ON q.agent_id = wa.id;
COMMENT ON VIEW pybatch.agent_status IS
    'One row per agent of public.workspace_agents with Coder''s status (connecting, connected, disconnected, timeout) using settings.inactive_timeout, and whether a newer heartbeat still waits to be merged, in staging or handed off to pybatch.pending (the answer to "why does this agent look stale?"); a quarantined agent shows its error. Reads all of staging and pending once per query.';
COMMENT ON COLUMN pybatch.agent_status.newer_heartbeat_staged IS 'True when staging or pybatch.pending holds a heartbeat newer than last_connected_at: a coming flush will move it. NULL on a hot standby.';
COMMENT ON COLUMN pybatch.agent_status.pending_beat_at IS 'Newest beat of this agent handed off to pybatch.pending and not merged yet (deferred when its row was locked); NULL if none (or on a hot standby).';
COMMENT ON COLUMN pybatch.agent_status.quarantined_beat_at IS 'Newest beat kept in pybatch.quarantine for this agent; NULL when it is not quarantined.';
COMMENT ON COLUMN pybatch.agent_status.quarantine_error IS 'Why this agent''s merge failed (it is quarantined and retried with back-off); NULL when not quarantined.';
COMMENT ON COLUMN pybatch.agent_status.quarantine_retry_at IS 'When the quarantined agent is retried next.';

-- ---------------------------------------------------------------------------
-- flush_history: 0004's figures per flush.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE VIEW pybatch.flush_history AS
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
       l.error,
       l.passes,
       l.hot_updates,
       l.deferred_agents,
       l.quarantined_agents,
       l.newest_event_at,
       l.heap_bytes,
       l.index_bytes
FROM pybatch.flush_log l
ORDER BY l.started_at DESC, l.id DESC;
COMMENT ON COLUMN pybatch.flush_history.passes IS 'Committed passes the merge took (at most one row per heap page each).';
COMMENT ON COLUMN pybatch.flush_history.hot_updates IS 'Of agents_updated, how many were HOT updates.';
COMMENT ON COLUMN pybatch.flush_history.deferred_agents IS 'Agents whose row another transaction held locked: left in pybatch.pending for the next flush.';
COMMENT ON COLUMN pybatch.flush_history.quarantined_agents IS 'Agents whose merge failed alone and went to pybatch.quarantine.';
COMMENT ON COLUMN pybatch.flush_history.newest_event_at IS 'Newest beat_at the flush applied.';
COMMENT ON COLUMN pybatch.flush_history.heap_bytes IS 'Size of public.workspace_agents (heap) after the flush.';
COMMENT ON COLUMN pybatch.flush_history.index_bytes IS 'Size of its indexes after the flush.';

-- ---------------------------------------------------------------------------
-- behind: flushes succeed on time but do not keep up.
-- ---------------------------------------------------------------------------
CREATE FUNCTION pybatch.backlog_verdict()
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
    FROM pybatch.flush_log l WHERE l.error IS NULL
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

-- ---------------------------------------------------------------------------
-- health: ok, late, behind or stalled; the measured worst staleness; who holds
-- the flush lock.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE VIEW pybatch.health AS
WITH cfg AS (
    SELECT s.flush_interval, s.heartbeat_period, s.client_write_interval FROM pybatch.settings s
), last_success AS (
    SELECT l.started_at, l.started_at + l.duration AS finished_at
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
), windows AS (
    -- A beat staged just after one successful flush drained is merged by the end of
    -- the next: its wait is that flush's finish - the previous flush's start.
    SELECT r.started_at + r.duration
           - pg_catalog.lag(r.started_at) OVER (ORDER BY r.started_at, r.id) AS wait
    FROM (SELECT l.id, l.started_at, l.duration FROM pybatch.flush_log l WHERE l.error IS NULL
          ORDER BY l.started_at DESC, l.id DESC LIMIT 21) r
), waited AS (
    -- ... and a beat staged after the last one started has waited now() - that start.
    SELECT GREATEST((SELECT pg_catalog.max(w.wait) FROM windows w),
                    (SELECT pg_catalog.now() - ok.started_at FROM last_success ok)) AS max_wait
), holders AS (
    SELECT pg_catalog.string_agg(
               pg_catalog.format('pid %s (role %s, application %s) for %s', h.pid,
                                 COALESCE(h.role::text, '?'), COALESCE(NULLIF(h.application_name, ''), '?'),
                                 COALESCE(pybatch.seconds_text(h.for_how_long), '?')),
               ', ' ORDER BY h.xact_start) COLLATE "default" AS held_by  -- role names sort as "C"
    FROM pybatch.flush_lock_holders h
    WHERE h.holding
), judged AS (
    SELECT cfg.flush_interval,
           ok.finished_at AS last_success_at,
           pg_catalog.now() - ok.finished_at AS last_success_age,
           bad.finished_at AS last_failure_at,
           bad.error AS last_error,
           b.behind,
           b.reason AS behind_reason,
           cfg.heartbeat_period + cfg.client_write_interval + w.max_wait AS worst_staleness,
           w.max_wait,
           hl.held_by
    FROM cfg
    LEFT JOIN last_success ok ON true
    LEFT JOIN last_failure bad ON true
    CROSS JOIN waited w
    CROSS JOIN holders hl
    CROSS JOIN pybatch.backlog_verdict() b
)
SELECT j.last_success_at,
       j.last_success_age,
       j.flush_interval,
       CASE
           WHEN j.last_success_at IS NULL THEN 'stalled'
           WHEN j.last_success_age > 5 * j.flush_interval THEN 'stalled'
           WHEN j.last_success_age > 2 * j.flush_interval THEN 'late'
           WHEN j.behind THEN 'behind'
           ELSE 'ok'
       END AS status,
       CASE
           WHEN j.last_success_at IS NULL THEN
               'no successful flush recorded in pybatch.flush_log'
               || CASE WHEN j.held_by IS NOT NULL THEN '; flushes are skipped: pybatch.flush_lock is held by ' || j.held_by
                       WHEN j.last_error IS NOT NULL THEN '; last flush failed: ' || j.last_error
                       ELSE '; is a scheduler running (pg_cron job or `pybatch scheduler`)?' END
           WHEN j.last_success_age <= 2 * j.flush_interval THEN
               CASE WHEN j.behind THEN j.behind_reason
                    ELSE 'last successful flush ' || pybatch.seconds_text(j.last_success_age)
                         || ' ago, within 2 flush intervals' END
           ELSE
               'last successful flush ' || pybatch.seconds_text(j.last_success_age)
               || ' ago, over ' || CASE WHEN j.last_success_age <= 5 * j.flush_interval THEN '2' ELSE '5' END
               || ' flush intervals of ' || j.flush_interval::text
               || CASE WHEN j.held_by IS NOT NULL THEN '; flushes are skipped: pybatch.flush_lock is held by ' || j.held_by
                       WHEN j.last_failure_at > j.last_success_at THEN '; last flush failed: ' || j.last_error
                       ELSE '; is a scheduler running (pg_cron job or `pybatch scheduler`)?' END
       END AS reason,
       j.last_failure_at,
       j.last_error,
       j.behind,
       j.worst_staleness,
       j.max_wait AS max_beat_wait,
       j.held_by AS flush_lock_held_by
FROM judged j;
COMMENT ON VIEW pybatch.health IS
    'One row: is flushing keeping up? status ok (last success within 2 flush intervals and not behind), behind (on time, but the last flush was capped with a cap''s worth still staged, or pending rows wait too long), late (last success within 5 intervals) or stalled (older, or never), with a reason that names who holds pybatch.flush_lock when flushes are being skipped. Also the measured worst staleness of last_connected_at. Usable as a liveness check, also on a hot standby.';
COMMENT ON COLUMN pybatch.health.status IS 'ok, behind, late or stalled (the first that applies, worst first: stalled, late, behind).';
COMMENT ON COLUMN pybatch.health.behind IS 'True when flushes do not keep up although they run (see pybatch.backlog_verdict()); NULL on a hot standby.';
COMMENT ON COLUMN pybatch.health.worst_staleness IS 'Measured: settings.heartbeat_period + settings.client_write_interval + max_beat_wait. How stale a connected agent''s last_connected_at got at worst lately; compare with settings.inactive_timeout.';
COMMENT ON COLUMN pybatch.health.max_beat_wait IS 'Measured over the last 20 successful flushes: the longest time from one flush''s start to the next one''s end (a beat staged just after a drain waits that long), or now() - the last start if longer. Beats deferred or capped wait longer (see behind).';
COMMENT ON COLUMN pybatch.health.flush_lock_held_by IS 'Sessions holding pybatch.flush_lock now (pid, role, application, for how long), from pybatch.flush_lock_holders; NULL when free.';

-- ---------------------------------------------------------------------------
-- The target table's shape, measured (doctor reports it).
-- ---------------------------------------------------------------------------
CREATE FUNCTION pybatch.table_shape(max_pages integer DEFAULT 2000)
RETURNS TABLE (
    fillfactor integer,
    heap_bytes bigint,
    heap_pages bigint,
    index_count integer,
    index_bytes bigint,
    sampled_pages bigint,
    live_rows bigint,
    rows_per_page numeric,
    avg_row_bytes numeric,
    unused_percent numeric,
    method text,
    indexed_flushed_columns text[]
)
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    target CONSTANT pg_catalog.regclass := 'public.workspace_agents'::pg_catalog.regclass;
    block integer := pg_catalog.current_setting('block_size')::integer;
    sample_percent numeric;
    sampled_rows bigint;
    row_bytes numeric;
BEGIN
    IF max_pages IS NULL OR max_pages < 1 THEN
        RAISE EXCEPTION 'pybatch.table_shape: max_pages must be 1 or more, not %', max_pages
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT COALESCE((SELECT o.option_value::integer FROM pg_catalog.pg_options_to_table(c.reloptions) o
                     WHERE o.option_name = 'fillfactor'), 100)
    INTO fillfactor FROM pg_catalog.pg_class c WHERE c.oid = target;
    heap_bytes := pg_catalog.pg_relation_size(target);
    heap_pages := heap_bytes / block;
    index_bytes := pg_catalog.pg_indexes_size(target);
    SELECT pg_catalog.count(*)::integer INTO index_count FROM pg_catalog.pg_index i WHERE i.indrelid = target;
    SELECT pg_catalog.array_agg(DISTINCT a.attname::text ORDER BY a.attname::text) INTO indexed_flushed_columns
    FROM pg_catalog.pg_index i
    JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid
         AND (a.attnum = ANY (i.indkey)
              OR pg_catalog.pg_get_expr(i.indexprs, i.indrelid) ~ ('\m' || a.attname || '\M')
              OR pg_catalog.pg_get_expr(i.indpred, i.indrelid) ~ ('\m' || a.attname || '\M'))
    WHERE i.indrelid = target
      AND a.attname IN ('first_connected_at', 'last_connected_at', 'disconnected_at',
                        'last_connected_replica_id', 'updated_at');
    indexed_flushed_columns := COALESCE(indexed_flushed_columns, '{}');

    IF heap_pages = 0 THEN
        sampled_pages := 0;
        live_rows := 0;
        method := 'empty table';
        RETURN NEXT;
        RETURN;
    END IF;
    -- Live row versions only (what a scan sees); whole pages, so per-page figures hold.
    sample_percent := LEAST(100, 100.0 * max_pages / heap_pages);
    SELECT pg_catalog.count(*), COALESCE(pg_catalog.sum(pg_catalog.pg_column_size(wa.*)), 0)
    INTO sampled_rows, row_bytes
    FROM public.workspace_agents wa TABLESAMPLE SYSTEM (sample_percent);
    -- The expected number of pages in the sample (exact at 100 %).
    sampled_pages := pg_catalog.round(heap_pages * sample_percent / 100)::bigint;
    IF sample_percent >= 100 THEN
        method := 'exact: every page read';
        live_rows := sampled_rows;
    ELSE
        method := 'estimate from a ' || pg_catalog.round(sample_percent, 2)::text || ' % block sample';
        live_rows := pg_catalog.round(sampled_rows * 100 / sample_percent)::bigint;
    END IF;
    rows_per_page := pg_catalog.round(sampled_rows::numeric / GREATEST(sampled_pages, 1), 1);
    avg_row_bytes := CASE WHEN sampled_rows > 0 THEN pg_catalog.round(row_bytes / sampled_rows) END;
    -- A page holds a 24-byte header; each row takes its size plus a 4-byte line pointer.
    unused_percent := GREATEST(0, pg_catalog.round(
        100 * (1 - (row_bytes + 4 * sampled_rows) / (GREATEST(sampled_pages, 1)::numeric * (block - 24))), 1));
    RETURN NEXT;
END
$$;
COMMENT ON FUNCTION pybatch.table_shape(integer) IS
    'Measures public.workspace_agents: fillfactor (reloptions; 100 when unset), heap and index sizes, live rows per page, their average size (pg_column_size of the row) and unused_percent: the share of the heap that live rows do not take (free space plus dead row versions not yet pruned). Reads every page up to max_pages, else a block sample of about max_pages pages (method says which). indexed_flushed_columns: columns the merge writes that an index covers (their updates can never be HOT).';
REVOKE EXECUTE ON FUNCTION pybatch.table_shape(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pybatch.table_shape(integer) TO pg_monitor;

-- ---------------------------------------------------------------------------
-- 0004's flush_lock_holders, documented column by column like the other views.
-- ---------------------------------------------------------------------------
COMMENT ON COLUMN pybatch.flush_lock_holders.pid IS 'Backend process id of the session.';
COMMENT ON COLUMN pybatch.flush_lock_holders.holding IS 'True: it holds pybatch.flush_lock (runs a flush step, or an open transaction that called SELECT pybatch.flush()); false: it waits for the holder.';
COMMENT ON COLUMN pybatch.flush_lock_holders.role IS 'The session''s role (pg_stat_activity.usename).';
COMMENT ON COLUMN pybatch.flush_lock_holders.application_name IS 'The session''s application_name (pg_cron, pybatch scheduler, an app...).';
COMMENT ON COLUMN pybatch.flush_lock_holders.client_addr IS 'The client''s address; NULL over a Unix socket.';
COMMENT ON COLUMN pybatch.flush_lock_holders.xact_start IS 'When its transaction started.';
COMMENT ON COLUMN pybatch.flush_lock_holders.state IS 'pg_stat_activity.state: active, idle in transaction, ...';
COMMENT ON COLUMN pybatch.flush_lock_holders.for_how_long IS 'now() - xact_start: how long its transaction has held (or waited for) the lock.';
