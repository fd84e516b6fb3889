-- ---------------------------------------------------------------------------
-- flush_begin: the hand-off of a flush in one lane (flush_begin_lanes).
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pybatch.flush_begin(max_rows bigint DEFAULT NULL, lock_wait interval DEFAULT '0 seconds')
RETURNS pybatch.flush_result
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pybatch.flush_begin_lanes(max_rows, lock_wait, 1);
$$;
COMMENT ON FUNCTION pybatch.flush_begin(bigint, interval) IS
    'Internal step 1 of a flush: takes pybatch.flush_lock (or returns skipped after lock_wait), then drains staging into pybatch.pending, one row per agent numbered by heap page, and writes the flush''s row in pybatch.flush_log. On error staging is kept and the error returned.';
REVOKE EXECUTE ON FUNCTION pybatch.flush_begin(bigint, interval) FROM PUBLIC;
