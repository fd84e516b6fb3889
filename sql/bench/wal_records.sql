-- bench: the WAL written between two positions, by resource manager and record
-- type (pg_walinspect, PostgreSQL 15+). It shows what each row version costs:
-- the HOT update itself, the prune that made room for it, the tuple lock a
-- BEFORE UPDATE trigger takes, the commit. The WAL is the whole server's.
-- Parameters: start_lsn, end_lsn; {walinspect} is the extension's schema.
SELECT s."resource_manager/record_type" AS record, s.count, s.combined_size, s.fpi_size
FROM {walinspect}.pg_get_wal_stats(%(start_lsn)s::pg_catalog.pg_lsn, %(end_lsn)s::pg_catalog.pg_lsn, true) AS s
WHERE s.count > 0
ORDER BY s.combined_size DESC
