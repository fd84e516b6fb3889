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
    WHERE l.error IS NULL AND l.completed_at IS NOT NULL  -- not one still running or interrupted
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
    FROM (SELECT l.id, l.started_at, l.duration FROM pybatch.flush_log l
          WHERE l.error IS NULL AND l.completed_at IS NOT NULL
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
COMMENT ON COLUMN pybatch.health.last_success_at IS 'When the last successful flush ended; NULL if none is recorded.';
COMMENT ON COLUMN pybatch.health.last_success_age IS 'now() - last_success_at.';
COMMENT ON COLUMN pybatch.health.flush_interval IS 'settings.flush_interval, the yardstick for late and stalled.';
COMMENT ON COLUMN pybatch.health.reason IS 'Why the status is what it is, for people.';
COMMENT ON COLUMN pybatch.health.last_failure_at IS 'When the last failed flush ended; NULL if none is recorded.';
COMMENT ON COLUMN pybatch.health.last_error IS 'Error of the last failed flush.';
COMMENT ON VIEW pybatch.health IS
    'One row: is flushing keeping up? status ok (last success within 2 flush intervals and not behind), behind (on time, but the last flush was capped with a cap''s worth still staged, or pending rows wait too long), late (last success within 5 intervals) or stalled (older, or never), with a reason that names who holds pybatch.flush_lock when flushes are being skipped. Also the measured worst staleness of last_connected_at. Usable as a liveness check, also on a hot standby.';
COMMENT ON COLUMN pybatch.health.status IS 'ok, behind, late or stalled (the first that applies, worst first: stalled, late, behind).';
COMMENT ON COLUMN pybatch.health.behind IS 'True when flushes do not keep up although they run (see pybatch.backlog_verdict()); NULL on a hot standby.';
COMMENT ON COLUMN pybatch.health.worst_staleness IS 'Measured: settings.heartbeat_period + settings.client_write_interval + max_beat_wait. How stale a connected agent''s last_connected_at got at worst lately; compare with settings.inactive_timeout.';
COMMENT ON COLUMN pybatch.health.max_beat_wait IS 'Measured over the last 20 successful flushes: the longest time from one flush''s start to the next one''s end (a beat staged just after a drain waits that long), or now() - the last start if longer. Beats deferred or capped wait longer (see behind).';
COMMENT ON COLUMN pybatch.health.flush_lock_held_by IS 'Sessions holding pybatch.flush_lock now (pid, role, application, for how long), from pybatch.flush_lock_holders; NULL when free.';
GRANT SELECT ON pybatch.health TO pg_monitor;
