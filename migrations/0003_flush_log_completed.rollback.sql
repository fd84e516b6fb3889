-- Undo 0003. A row of an interrupted flush stays, as a flush that ended early.
-- CASCADE: the views that read the column (flush_history, health) go with it;
-- the `pybatch migrate` of the version returned to makes them again from its
-- sources (grants made on them by `pybatch grant reader` must be made again).
ALTER TABLE pybatch.flush_log DROP COLUMN completed_at CASCADE;
