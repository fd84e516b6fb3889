-- The budget for the stored settings, as a view: monitoring roles (pg_monitor, and
-- `pybatch grant reader`, which covers the functions views call) read it.
CREATE OR REPLACE VIEW pybatch.staleness AS
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
GRANT SELECT ON pybatch.staleness TO pg_monitor;
