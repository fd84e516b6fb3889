-- bench `coder_batch`: Coder's own batcher (at most 500 agents, or every 5 s) as
-- FACTS.md describes it: one UPDATE ... FROM unnest(...) carrying every connection
-- column, NULLs sent as sentinels (year 1, the nil uuid) and turned back with NULLIF,
-- and the ordering guard its later version added, on updated_at.
-- Differs from app_batch (sql/bench/app_batch_update.sql): first_connected_at comes
-- from the app's memory, the guard is on updated_at, and the sentinels.
-- Parameters: ids uuid[], first_ats, last_ats timestamptz[], replica_ids uuid[],
-- disconnected_ats timestamptz[], updated_ats timestamptz[].
UPDATE public.workspace_agents wa
SET first_connected_at = NULLIF(a.first_connected_at, '0001-01-01 00:00:00+00'::timestamptz),
    last_connected_at = NULLIF(a.last_connected_at, '0001-01-01 00:00:00+00'::timestamptz),
    last_connected_replica_id = NULLIF(a.last_connected_replica_id, '00000000-0000-0000-0000-000000000000'::uuid),
    disconnected_at = NULLIF(a.disconnected_at, '0001-01-01 00:00:00+00'::timestamptz),
    updated_at = a.updated_at
FROM unnest(%(ids)s::uuid[], %(first_ats)s::timestamptz[], %(last_ats)s::timestamptz[],
            %(replica_ids)s::uuid[], %(disconnected_ats)s::timestamptz[], %(updated_ats)s::timestamptz[])
     AS a(id, first_connected_at, last_connected_at, last_connected_replica_id, disconnected_at, updated_at)
WHERE wa.id = a.id
  AND wa.updated_at <= a.updated_at
