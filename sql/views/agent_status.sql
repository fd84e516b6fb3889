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
COMMENT ON COLUMN pybatch.agent_status.agent_id IS 'public.workspace_agents.id.';
COMMENT ON COLUMN pybatch.agent_status.status IS 'connecting, connected, disconnected or timeout, by Coder''s rules.';
COMMENT ON COLUMN pybatch.agent_status.created_at IS 'workspace_agents.created_at.';
COMMENT ON COLUMN pybatch.agent_status.first_connected_at IS 'workspace_agents.first_connected_at.';
COMMENT ON COLUMN pybatch.agent_status.last_connected_at IS 'workspace_agents.last_connected_at (as of the last flush).';
COMMENT ON COLUMN pybatch.agent_status.disconnected_at IS 'workspace_agents.disconnected_at.';
COMMENT ON COLUMN pybatch.agent_status.connection_timeout_seconds IS 'workspace_agents.connection_timeout_seconds (0: no timeout).';
COMMENT ON COLUMN pybatch.agent_status.staged_beat_at IS 'Newest heartbeat of this agent still in staging; NULL if none (or on a hot standby).';
COMMENT ON VIEW pybatch.agent_status IS
    'One row per agent of public.workspace_agents with Coder''s status (connecting, connected, disconnected, timeout) using settings.inactive_timeout, and whether a newer heartbeat still waits to be merged, in staging or handed off to pybatch.pending (the answer to "why does this agent look stale?"); a quarantined agent shows its error. Reads all of staging and pending once per query.';
COMMENT ON COLUMN pybatch.agent_status.newer_heartbeat_staged IS 'True when staging or pybatch.pending holds a heartbeat newer than last_connected_at: a coming flush will move it. NULL on a hot standby.';
COMMENT ON COLUMN pybatch.agent_status.pending_beat_at IS 'Newest beat of this agent handed off to pybatch.pending and not merged yet (deferred when its row was locked); NULL if none (or on a hot standby).';
COMMENT ON COLUMN pybatch.agent_status.quarantined_beat_at IS 'Newest beat kept in pybatch.quarantine for this agent; NULL when it is not quarantined.';
COMMENT ON COLUMN pybatch.agent_status.quarantine_error IS 'Why this agent''s merge failed (it is quarantined and retried with back-off); NULL when not quarantined.';
COMMENT ON COLUMN pybatch.agent_status.quarantine_retry_at IS 'When the quarantined agent is retried next.';
GRANT SELECT ON pybatch.agent_status TO pg_monitor;
