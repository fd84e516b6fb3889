-- bench staleness: the worst age, in seconds, of last_connected_at over the bench
-- agents that have connected (all of them are alive: the bench never disconnects).
-- Parameters: lo, hi (the bench agent id range).
SELECT EXTRACT(EPOCH FROM pg_catalog.now() - pg_catalog.min(wa.last_connected_at))::float8,
       pg_catalog.count(wa.last_connected_at)
FROM public.workspace_agents wa
WHERE wa.id BETWEEN %(lo)s AND %(hi)s
