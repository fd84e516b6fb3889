-- Undo 0002. Routines that use the column are re-applied from their sources by
-- the migrate of the pybatch version being returned to.
ALTER TABLE pybatch.pending DROP COLUMN failed_error;
