-- bench: what the target table and the server are, for the report.
SELECT pg_catalog.current_setting('server_version') AS server_version,
       pg_catalog.current_setting('server_version_num')::int AS server_version_num,
       COALESCE((SELECT pg_catalog.split_part(o, '=', 2)::int
                 FROM pg_catalog.unnest(c.reloptions) AS o WHERE o LIKE 'fillfactor=%'), 100) AS fillfactor,
       (SELECT pg_catalog.count(*) FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid)::int AS indexes,
       pg_catalog.current_setting('synchronous_commit') AS synchronous_commit,
       pg_catalog.current_setting('fsync') AS fsync,
       pg_catalog.current_setting('full_page_writes') AS full_page_writes
FROM pg_catalog.pg_class c
WHERE c.oid = 'public.workspace_agents'::pg_catalog.regclass
