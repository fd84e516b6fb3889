-- bench: heap UPDATE records (HOT or not) written between two positions to the
-- given relations of this database only (pg_walinspect). The WAL is the whole
-- server's: an autovacuum ANALYZE meanwhile updates pg_statistic, and those
-- records are not the strategy's. A record names each block it changes as
-- "rel <tablespace>/<database>/<relfilenode>"; an update that moves a row to
-- another page names two blocks, so records are counted, not blocks.
-- Parameters: start_lsn, end_lsn, relations (regclass[]); {walinspect} is the extension's schema.
WITH targets AS (
    SELECT pg_catalog.format('/%%s/%%s ', d.oid, pg_catalog.pg_relation_filenode(c.rel)) AS tag
    FROM pg_catalog.unnest(%(relations)s::pg_catalog.regclass[]) AS c (rel)
    CROSS JOIN pg_catalog.pg_database d
    WHERE d.datname = pg_catalog.current_database()
)
SELECT pg_catalog.count(*)
FROM {walinspect}.pg_get_wal_records_info(%(start_lsn)s::pg_catalog.pg_lsn, %(end_lsn)s::pg_catalog.pg_lsn) AS r
WHERE r.resource_manager = 'Heap'
  AND r.record_type ~ '^(HOT_)?UPDATE(\+INIT)?$'
  AND EXISTS (SELECT FROM targets t WHERE pg_catalog.strpos(r.block_ref, t.tag) > 0)
