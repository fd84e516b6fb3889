-- pybatch 0002: an agent whose merge failed in a pass waits in pybatch.pending
-- with its error until the flush has run every pass; the flush then judges the
-- failures as a whole (sql/routines/flush/next_pass_in.sql): quarantine when
-- anything else merged, systemic when nothing did. Before, a failure in the
-- first pass of a small fleet was judged systemic at once and stopped it.
-- depends: 0001_baseline

ALTER TABLE pybatch.pending ADD COLUMN failed_error text;
COMMENT ON COLUMN pybatch.pending.failed_error IS
    'Set while a flush runs for an agent whose merge failed (SQLSTATE: message); the flush quarantines it at its end if anything else merged.';
