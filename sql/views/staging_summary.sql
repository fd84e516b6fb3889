-- ---------------------------------------------------------------------------
-- staging_summary: what waits in staging, and what the passes hold (pending,
-- quarantine). No view names pybatch.heartbeats: UNLOGGED staging cannot even
-- be planned on a hot standby, so plpgsql functions that check
-- pg_is_in_recovery() first read it (see staging_stats()).
-- ---------------------------------------------------------------------------
CREATE OR REPLACE VIEW pybatch.staging_summary AS
SELECT s.available, s.reason, s.estimated, s.method, s.rows_staged, s.distinct_agents,
       s.oldest_beat_at, s.newest_beat_at, s.oldest_beat_age, s.newest_beat_age, s.size_bytes,
       p.pending_agents, p.pending_beats, p.deferred_agents, p.oldest_pending_at,
       pg_catalog.now() - p.oldest_pending_at AS oldest_pending_age,
       p.quarantined_agents, p.quarantined_beats, p.oldest_quarantined_at, p.quarantine_next_retry_at,
       p.quarantine_sample_agent, p.quarantine_sample_error
FROM pybatch.staging_stats() s
CROSS JOIN pybatch.pending_stats() p;
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
GRANT SELECT ON pybatch.staging_summary TO pg_monitor;
