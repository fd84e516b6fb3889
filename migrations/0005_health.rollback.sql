-- Undo 0005: the views go back to their 0003 shape (a view can lose columns only by
-- being dropped and made again), the health helpers and the two settings go.
DROP VIEW pybatch.health;
DROP VIEW pybatch.staleness;
DROP VIEW pybatch.agent_status;
DROP VIEW pybatch.flush_history;
DROP VIEW pybatch.staging_summary;
DROP FUNCTION pybatch.table_shape(integer);
DROP FUNCTION pybatch.backlog_verdict();
DROP FUNCTION pybatch.pending_latest_beats();
DROP FUNCTION pybatch.pending_stats();
DROP FUNCTION pybatch.staleness_budget(interval, interval, interval, interval);
DROP FUNCTION pybatch.seconds_text(interval);
ALTER TABLE pybatch.settings
    DROP CONSTRAINT settings_heartbeat_period_range,
    DROP CONSTRAINT settings_client_write_interval_range,
    DROP COLUMN heartbeat_period,
    DROP COLUMN client_write_interval;

-- The views as 0003 made them.
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

GRANT SELECT ON pybatch.staging_summary, pybatch.flush_history, pybatch.agent_status, pybatch.health TO pg_monitor;
