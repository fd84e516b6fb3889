-- bench reset, `--table coder`: the bench agents in Coder's workspace_agents
-- (sql/bench/coder_workspace_agents.sql), created, started and ready but never
-- connected, with values shaped like a real deployment's: one workspace resource per
-- agent, a random auth token, an environment variable, Coder's default display apps.
-- Rows are ~330 bytes as loaded and ~360 once connected (the three connection
-- columns add 32), as measured on Coder's own table (FACTS.md: 362 B on average).
-- Inserted in fleet order (pybatch.bench.fleet.agent_ids: random-looking ids), so every
-- strategy starts from the same pages and heap order is unrelated to key order, as in
-- a table grown over months.
-- Parameters: ids (uuid[], in insertion order), created_at.
WITH agents AS (
    SELECT a.id, a.n FROM pg_catalog.unnest(%(ids)s::uuid[]) WITH ORDINALITY AS a (id, n)
),
resources AS (
    INSERT INTO public.workspace_resources (id, created_at, job_id, transition, type, name)
    SELECT a.id, %(created_at)s, pg_catalog.md5('job' || a.n)::uuid, 'start', 'docker_container', 'workspace'
    FROM agents a
    ORDER BY a.n
    RETURNING id
)
INSERT INTO public.workspace_agents (
    id, created_at, updated_at, name, resource_id, auth_token, architecture, environment_variables,
    operating_system, directory, version, motd_file, lifecycle_state,
    expanded_directory, started_at, ready_at, api_version)
SELECT a.id, %(created_at)s, %(created_at)s, 'main', r.id, pg_catalog.md5('token' || a.n)::uuid, 'amd64',
       pg_catalog.jsonb_build_object('GIT_AUTHOR_EMAIL', 'developer' || a.n || '@example.com'),
       'linux', '~/project', 'v2.17.2', '/etc/motd', 'ready', '/home/coder/project', %(created_at)s, %(created_at)s, '2.3'
FROM agents a
JOIN resources r ON r.id = a.id
ORDER BY a.n
