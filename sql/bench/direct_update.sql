-- bench `direct`: one UPDATE per heartbeat, as Coder wrote it before batching
-- (UpdateWorkspaceAgentConnectionByID): every connection column, no ordering guard.
-- Parameters: at, replica_id, agent_id.
UPDATE public.workspace_agents
SET first_connected_at = COALESCE(first_connected_at, %(at)s),
    last_connected_at = %(at)s,
    last_connected_replica_id = %(replica_id)s,
    disconnected_at = NULL,
    updated_at = %(at)s
WHERE id = %(agent_id)s
