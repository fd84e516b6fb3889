-- bench reset: the bench agents, created and never connected, all with the same
-- created_at, inserted in id order so every strategy starts from the same pages.
-- Parameters: count, id_prefix (the high 64 bits of every bench agent id), created_at.
INSERT INTO public.workspace_agents (id, created_at, updated_at)
SELECT (pg_catalog.lpad(pg_catalog.to_hex(%(id_prefix)s::bigint), 16, '0')
        || pg_catalog.lpad(pg_catalog.to_hex(n), 16, '0'))::uuid,
       %(created_at)s, %(created_at)s
FROM pg_catalog.generate_series(0::bigint, %(count)s::bigint - 1) AS n
ORDER BY n
