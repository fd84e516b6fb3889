-- pybatch's SQL contract from psql, no client library:
--
--   psql "$PYBATCH_DSN" -v ON_ERROR_STOP=1 -f examples/plain_sql.sql
--
-- Any language with a PostgreSQL driver writes heartbeats the same way.

-- The agent must exist in workspace_agents (Coder creates it when it builds a workspace).
INSERT INTO public.workspace_agents (id)
VALUES ('e0000000-0000-4000-8000-000000000301'), ('e0000000-0000-4000-8000-000000000302')
ON CONFLICT (id) DO NOTHING;

-- A heartbeat is one INSERT (or a COPY row) into the UNLOGGED staging table.
-- beat_at defaults to now(); replica_id may be NULL.
INSERT INTO pybatch.heartbeats (agent_id, replica_id)
VALUES ('e0000000-0000-4000-8000-000000000301', 'e0000000-0000-4000-8000-0000000003ff'),
       ('e0000000-0000-4000-8000-000000000302', 'e0000000-0000-4000-8000-0000000003ff');

-- The pg_cron job or `pybatch scheduler` runs this every few seconds; here we run it once.
-- It commits between passes, so it runs outside a transaction block (psql's default);
-- inside one, SELECT * FROM pybatch.flush() does the same in the caller's transaction.
CALL pybatch.flush_in_passes();
SELECT rows_staged, agents_updated, error FROM pybatch.flush_history LIMIT 1;

-- A disconnect bypasses staging: written at once, true when the row changed.
SELECT pybatch.disconnect('e0000000-0000-4000-8000-000000000302') AS disconnected;

SELECT agent_id, status, last_connected_at, disconnected_at
FROM pybatch.agent_status
WHERE agent_id IN ('e0000000-0000-4000-8000-000000000301', 'e0000000-0000-4000-8000-000000000302')
ORDER BY agent_id;
