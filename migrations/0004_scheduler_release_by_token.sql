-- pybatch 0004: the scheduler lease belongs to a process's token, not to a
-- server backend (sql/routines/schedule/scheduler_claim.sql says why). The
-- release by backend goes (pybatch.scheduler_release(text) replaces it), and
-- so does the holder's backend_start, which a role without pg_read_all_stats
-- cannot see: liveness is judged by the holder's pid alone.
-- depends: 0003_flush_log_completed

DROP FUNCTION IF EXISTS pybatch.scheduler_release();
ALTER TABLE pybatch.scheduler_lease DROP COLUMN holder_backend_start;
