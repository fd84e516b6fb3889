-- Undo 0004: back to 0003's one-statement flush. Pending rows go back to staging
-- (one row per agent keeps its latest and earliest beat); quarantined ones too.
INSERT INTO pybatch.heartbeats (agent_id, replica_id, beat_at)
SELECT p.agent_id, p.replica_id, p.last_at FROM pybatch.pending p
UNION ALL SELECT p.agent_id, NULL, p.first_at FROM pybatch.pending p WHERE p.first_at < p.last_at
UNION ALL SELECT q.agent_id, q.replica_id, q.last_at FROM pybatch.quarantine q
UNION ALL SELECT q.agent_id, NULL, q.first_at FROM pybatch.quarantine q WHERE q.first_at < q.last_at;
DROP FUNCTION pybatch.align_owner();
DROP PROCEDURE pybatch.flush_loop(interval, timestamptz);
DROP FUNCTION pybatch.flush_loop_next(pybatch.flush_result, interval, timestamptz, timestamptz);
DROP PROCEDURE pybatch.flush_in_passes(bigint, interval, pybatch.flush_result);
DROP FUNCTION pybatch.flush(bigint, interval);
DROP FUNCTION pybatch.disconnect(uuid, timestamptz);
DROP FUNCTION pybatch.requeue_quarantined(uuid);
DROP FUNCTION pybatch.flush_finish(pybatch.flush_result);
DROP FUNCTION pybatch.flush_pass(pybatch.flush_result);
DROP FUNCTION pybatch.flush_begin(bigint, interval);
DROP FUNCTION pybatch.merge_pass(integer, uuid);
DROP VIEW pybatch.flush_lock_holders;
DROP FUNCTION pybatch.flush_take_lock(interval);
DROP TABLE pybatch.quarantine;
DROP TABLE pybatch.pending;
DROP TABLE pybatch.flush_lock;
ALTER TYPE pybatch.flush_result
    DROP ATTRIBUTE passes, DROP ATTRIBUTE hot_updates, DROP ATTRIBUTE deferred_agents,
    DROP ATTRIBUTE quarantined_agents, DROP ATTRIBUTE newest_event_at;
ALTER TABLE pybatch.flush_log
    DROP COLUMN passes, DROP COLUMN hot_updates, DROP COLUMN deferred_agents,
    DROP COLUMN quarantined_agents, DROP COLUMN newest_event_at, DROP COLUMN heap_bytes,
    DROP COLUMN index_bytes;
ALTER TABLE pybatch.settings
    ALTER COLUMN flush_interval SET DEFAULT interval '10 seconds',
    DROP CONSTRAINT settings_flush_interval_range,
    DROP CONSTRAINT settings_inactive_timeout_range,
    DROP CONSTRAINT settings_future_tolerance_range,
    DROP CONSTRAINT settings_history_retention_range,
    DROP CONSTRAINT settings_max_rows_per_flush_range,
    ADD CONSTRAINT settings_flush_interval_check CHECK (flush_interval > interval '0'),
    ADD CONSTRAINT settings_inactive_timeout_check CHECK (inactive_timeout > interval '0'),
    ADD CONSTRAINT settings_future_tolerance_check CHECK (future_tolerance >= interval '0'),
    ADD CONSTRAINT settings_history_retention_check CHECK (history_retention > interval '0'),
    ADD CONSTRAINT settings_max_rows_per_flush_check CHECK (max_rows_per_flush > 0);
