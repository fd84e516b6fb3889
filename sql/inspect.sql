-- pybatch at a glance, for psql:  \i sql/inspect.sql
-- Reads only the views of schema pybatch (readable by pg_monitor); works on a
-- hot standby too, where the staging figures are left out with a reason.
\set QUIET on
\pset null '-'
\pset border 2
\pset expanded off

\echo
\echo '== health: ok (last flush <= 2 intervals ago), behind (on time, not keeping up), late (<= 5), stalled =='
SELECT status,
       reason,
       last_success_at,
       pg_catalog.round(EXTRACT(EPOCH FROM last_success_age), 1) AS last_success_age_s,
       flush_interval,
       pg_catalog.round(EXTRACT(EPOCH FROM worst_staleness), 1) AS worst_staleness_s,
       flush_lock_held_by,
       last_error
FROM pybatch.health;

\echo '== staleness budget (heartbeat period + client write + flush interval + flush time vs inactive_timeout) =='
SELECT verdict, reason FROM pybatch.staleness;

\echo '== staging (figures: exact, or an estimate from a block sample, as the column says) =='
SELECT available,
       COALESCE(reason, method) AS figures,
       rows_staged,
       distinct_agents,
       pg_catalog.round(EXTRACT(EPOCH FROM oldest_beat_age), 1) AS oldest_beat_age_s,
       pg_catalog.round(EXTRACT(EPOCH FROM newest_beat_age), 1) AS newest_beat_age_s,
       pg_catalog.pg_size_pretty(size_bytes) AS size
FROM pybatch.staging_summary;

\echo '== pending (handed off, not merged; deferred: row was locked) and quarantine (merge failed alone) =='
SELECT pending_agents,
       deferred_agents,
       pg_catalog.round(EXTRACT(EPOCH FROM oldest_pending_age), 1) AS oldest_pending_age_s,
       quarantined_agents,
       oldest_quarantined_at,
       quarantine_sample_agent,
       quarantine_sample_error
FROM pybatch.staging_summary;

\echo '== last 10 flushes, newest first =='
SELECT started_at,
       succeeded AS ok,
       rows_staged,
       agents_updated,
       stale_heartbeats AS stale,
       unknown_heartbeats AS unknown,
       future_heartbeats AS future,
       passes,
       hot_updates AS hot,
       deferred_agents AS deferred,
       quarantined_agents AS quarantined,
       pg_catalog.round(EXTRACT(EPOCH FROM duration) * 1000, 1) AS duration_ms,
       pg_catalog.pg_size_pretty(heap_bytes) AS heap,
       error
FROM pybatch.flush_history
LIMIT 10;

\echo '== agents by status (Coder''s rules; newer_staged: a newer heartbeat waits for the next flush) =='
SELECT status,
       pg_catalog.count(*) AS agents,
       pg_catalog.count(*) FILTER (WHERE newer_heartbeat_staged) AS newer_staged
FROM pybatch.agent_status
GROUP BY status
ORDER BY status;

\echo '== settings (change with `pybatch config set KEY VALUE`) =='
SELECT flush_interval, inactive_timeout, heartbeat_period, client_write_interval, future_tolerance,
       history_retention, max_rows_per_flush
FROM pybatch.settings;
\pset border 1
\set QUIET off
