-- Writers (by application_name) waiting on a lock right now, and on what:
-- "<wait_event> by <holder>", holder being "writer" (another writer, e.g. the
-- relation extension lock), a backend type such as "autovacuum worker", or
-- "client backend" (the flush).
SELECT pg_catalog.count(DISTINCT w.pid)::int AS waiting,
       COALESCE(pg_catalog.array_agg(DISTINCT w.wait_event || ' by ' || CASE
                    WHEN b.application_name = %(writer_app)s THEN 'writer'
                    ELSE COALESCE(b.backend_type, 'a finished backend') END), '{}') AS blockers
FROM pg_catalog.pg_stat_activity w
LEFT JOIN LATERAL pg_catalog.unnest(pg_catalog.pg_blocking_pids(w.pid)) AS bp(pid) ON true
LEFT JOIN pg_catalog.pg_stat_activity b ON b.pid = bp.pid
WHERE w.application_name = %(writer_app)s AND w.wait_event_type = 'Lock'
