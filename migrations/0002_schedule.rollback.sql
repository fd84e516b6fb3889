-- Undo 0002. `pybatch migrate --rollback` removes this database's pg_cron jobs
-- and ends a running loop before this runs (the jobs live in another database).
DROP PROCEDURE pybatch.flush_loop(interval, timestamptz);
DROP FUNCTION pybatch.flush_loop_pass(interval, timestamptz);
DROP FUNCTION pybatch.flush_loop_deadline(timestamptz);
