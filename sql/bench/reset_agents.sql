-- bench reset: the bench agents, created and never connected, all with the same
-- created_at, inserted in fleet order (pybatch.bench.fleet.agent_ids: random-looking
-- ids), so every strategy starts from the same pages and heap order is unrelated to
-- key order, as in a table grown over time.
-- Parameters: ids (uuid[], in insertion order), created_at.
INSERT INTO public.workspace_agents (id, created_at, updated_at)
SELECT a.id, %(created_at)s, %(created_at)s
FROM pg_catalog.unnest(%(ids)s::uuid[]) WITH ORDINALITY AS a (id, n)
ORDER BY a.n
