-- What keeps public.workspace_agents from serving as pybatch's target, one row per
-- problem (none: it fits, or it is absent and pybatch will create it). `pybatch
-- migrate` checks this before it applies anything; `pybatch doctor` reports it.
-- Parameter: none. Columns: problem (a sentence naming the column), sqlstate.
WITH needed (position, column_name, column_type) AS (
    VALUES (1, 'id', 'uuid'),
           (2, 'created_at', 'timestamp with time zone'),
           (3, 'updated_at', 'timestamp with time zone'),
           (4, 'first_connected_at', 'timestamp with time zone'),
           (5, 'last_connected_at', 'timestamp with time zone'),
           (6, 'disconnected_at', 'timestamp with time zone'),
           (7, 'last_connected_replica_id', 'uuid'),
           (8, 'connection_timeout_seconds', 'integer')
),
found AS (
    SELECT a.attname::text AS column_name, pg_catalog.format_type(a.atttypid, a.atttypmod) AS column_type
    FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = pg_catalog.to_regclass('public.workspace_agents')
      AND a.attnum > 0 AND NOT a.attisdropped
)
SELECT CASE WHEN f.column_name IS NULL
            THEN pg_catalog.format('public.workspace_agents is missing column "%s" (%s)', n.column_name, n.column_type)
            ELSE pg_catalog.format('public.workspace_agents column "%s" has type %s, expected %s',
                                   n.column_name, f.column_type, n.column_type)
       END AS problem,
       CASE WHEN f.column_name IS NULL THEN '42703' ELSE '42804' END AS sqlstate
FROM needed n
LEFT JOIN found f ON f.column_name = n.column_name
WHERE pg_catalog.to_regclass('public.workspace_agents') IS NOT NULL
  AND f.column_type IS DISTINCT FROM n.column_type
ORDER BY n.position;
