-- pybatch 0003: flush_log accounts for every flush. The hand-off writes its row
-- (what it drained and dropped), each pass adds its own figures, and the last
-- step sets completed_at. A flush killed on the way keeps a row with what it
-- did, and completed_at NULL. Rows of earlier flushes were written whole.
-- depends: 0002_pending_failed_error

ALTER TABLE pybatch.flush_log ADD COLUMN completed_at timestamptz;
UPDATE pybatch.flush_log SET completed_at = started_at + duration;
COMMENT ON COLUMN pybatch.flush_log.completed_at IS
    'When the flush ended. NULL: it is running, or it was interrupted (its row holds what it did until then).';
