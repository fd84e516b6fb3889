-- bench `app_batch`: the reference design. The app deduplicates per agent, then
-- writes the batch in one UPDATE ... FROM unnest(...). The newer-wins guard keeps
-- an older batch (a slow writer, a retry) from overwriting a newer heartbeat.
-- NULL replica ids travel as NULL, not as a sentinel.
-- Parameters: ids uuid[], ats timestamptz[], replica_ids uuid[].
UPDATE public.workspace_agents wa
SET first_connected_at = COALESCE(wa.first_connected_at, b.at),
    last_connected_at = b.at,
    last_connected_replica_id = b.replica_id,
    disconnected_at = NULL,
    updated_at = b.at
FROM unnest(%(ids)s::uuid[], %(ats)s::timestamptz[], %(replica_ids)s::uuid[]) AS b(id, at, replica_id)
WHERE wa.id = b.id
  AND (wa.last_connected_at IS NULL OR wa.last_connected_at <= b.at)
