-- ---------------------------------------------------------------------------
-- flush_history: what each flush did, newest first.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE VIEW pybatch.flush_history AS
SELECT l.id AS flush_id,
       l.started_at,
       l.started_at + l.duration AS finished_at,
       l.error IS NULL AND l.completed_at IS NOT NULL AS succeeded,
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
       l.index_bytes,
       l.completed_at
FROM pybatch.flush_log l
ORDER BY l.started_at DESC, l.id DESC;
COMMENT ON VIEW pybatch.flush_history IS
    'Recent flushes (kept for settings.history_retention), newest first; add LIMIT for the last few. Failed flushes have succeeded = false and the error.';
COMMENT ON COLUMN pybatch.flush_history.flush_id IS 'pybatch.flush_log.id.';
COMMENT ON COLUMN pybatch.flush_history.started_at IS 'When the flush started.';
COMMENT ON COLUMN pybatch.flush_history.finished_at IS 'When the flush ended (started_at + duration).';
COMMENT ON COLUMN pybatch.flush_history.succeeded IS 'False when the flush failed (it kept what it had not merged), or did not finish (completed_at NULL).';
COMMENT ON COLUMN pybatch.flush_history.rows_staged IS 'Staged heartbeats the flush drained.';
COMMENT ON COLUMN pybatch.flush_history.agents_updated IS 'workspace_agents rows the flush changed.';
COMMENT ON COLUMN pybatch.flush_history.stale_heartbeats IS 'Heartbeats older than what workspace_agents already held (changed nothing).';
COMMENT ON COLUMN pybatch.flush_history.unknown_heartbeats IS 'Heartbeats for agent ids not in workspace_agents (dropped).';
COMMENT ON COLUMN pybatch.flush_history.future_heartbeats IS 'Heartbeats dated beyond settings.future_tolerance (dropped).';
COMMENT ON COLUMN pybatch.flush_history.duration IS 'How long the flush took.';
COMMENT ON COLUMN pybatch.flush_history.error IS 'SQLSTATE and message of a failed flush; NULL on success.';
COMMENT ON COLUMN pybatch.flush_history.passes IS 'Committed passes the merge took (at most one row per heap page each).';
COMMENT ON COLUMN pybatch.flush_history.hot_updates IS 'Of agents_updated, how many were HOT updates.';
COMMENT ON COLUMN pybatch.flush_history.deferred_agents IS 'Agents whose row another transaction held locked: left in pybatch.pending for the next flush.';
COMMENT ON COLUMN pybatch.flush_history.quarantined_agents IS 'Agents whose merge failed alone and went to pybatch.quarantine.';
COMMENT ON COLUMN pybatch.flush_history.newest_event_at IS 'Newest beat_at the flush applied.';
COMMENT ON COLUMN pybatch.flush_history.heap_bytes IS 'Size of public.workspace_agents (heap) after the flush.';
COMMENT ON COLUMN pybatch.flush_history.index_bytes IS 'Size of its indexes after the flush.';
COMMENT ON COLUMN pybatch.flush_history.completed_at IS 'When the flush ended; NULL while it runs, or when it was interrupted (the row holds what it did until then).';
GRANT SELECT ON pybatch.flush_history TO pg_monitor;
