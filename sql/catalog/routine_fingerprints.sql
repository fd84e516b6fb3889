-- A fingerprint of every routine and view in schema pybatch, as the catalog holds
-- it: the definition (with SET clauses, security and volatility), the comments and
-- the owner. Grants are left out: `pybatch grant` adds to them. Used by `pybatch
-- migrate` to tell an object altered or dropped since it was applied.
SELECT n.nspname || '.' || p.proname AS object,
       pg_catalog.md5(pg_catalog.concat_ws(E'\n',
           pg_catalog.pg_get_functiondef(p.oid),
           pg_catalog.obj_description(p.oid, 'pg_proc'),
           p.proowner::pg_catalog.regrole::text)) AS fingerprint
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = 'pybatch'
UNION ALL
SELECT n.nspname || '.' || c.relname,
       pg_catalog.md5(pg_catalog.concat_ws(E'\n',
           pg_catalog.pg_get_viewdef(c.oid),
           pg_catalog.obj_description(c.oid, 'pg_class'),
           (SELECT pg_catalog.string_agg(a.attname || ': ' || COALESCE(pg_catalog.col_description(c.oid, a.attnum), ''),
                                         E'\n' ORDER BY a.attnum)
            FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0),
           c.relowner::pg_catalog.regrole::text))
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'pybatch' AND c.relkind = 'v'
ORDER BY 1;
