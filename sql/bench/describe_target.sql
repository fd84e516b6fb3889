-- bench: what the target table and the server are, for the report.
SELECT pg_catalog.current_setting('server_version') AS server_version,
       pg_catalog.current_setting('server_version_num')::int AS server_version_num,
       COALESCE((SELECT pg_catalog.split_part(o, '=', 2)::int
                 FROM pg_catalog.unnest(c.reloptions) AS o WHERE o LIKE 'fillfactor=%'), 100) AS fillfactor,
       (SELECT pg_catalog.count(*) FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid)::int AS indexes,
       (SELECT pg_catalog.array_agg(i.indexrelid::pg_catalog.regclass::text ORDER BY 1)
        FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid) AS index_names,
       (SELECT pg_catalog.count(*) FROM pg_catalog.pg_trigger t
        WHERE t.tgrelid = c.oid AND NOT t.tgisinternal)::int AS triggers,
       (SELECT pg_catalog.count(*) FROM pg_catalog.pg_constraint k
        WHERE k.conrelid = c.oid AND k.contype = 'f')::int AS foreign_keys,
       (SELECT pg_catalog.count(*) FROM pg_catalog.pg_attribute a
        WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped)::int AS columns,
       (SELECT pg_catalog.round(pg_catalog.avg(pg_catalog.pg_column_size(wa.*)))::int
        FROM public.workspace_agents wa) AS avg_row_bytes,
       pg_catalog.pg_relation_size(c.oid) AS heap_bytes,
       pg_catalog.pg_indexes_size(c.oid) AS index_bytes,
       pg_catalog.current_setting('synchronous_commit') AS synchronous_commit,
       pg_catalog.current_setting('fsync') AS fsync,
       pg_catalog.current_setting('full_page_writes') AS full_page_writes
FROM pg_catalog.pg_class c
WHERE c.oid = 'public.workspace_agents'::pg_catalog.regclass
