-- ---------------------------------------------------------------------------
-- flush_loop_next: when the pg_cron 1.4 loop flushes next. A capped drain
-- goes again at once; otherwise one interval after the last flush started.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pybatch.flush_loop_next(result pybatch.flush_result, flush_interval interval,
                                        stop_at timestamptz, pass_started timestamptz)
RETURNS timestamptz
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    row_cap bigint;
    next_pass timestamptz;
BEGIN
    IF result.error IS NOT NULL THEN
        RAISE WARNING 'pybatch.flush_loop: flush failed, the loop goes on: %', result.error;
    END IF;
    SELECT s.max_rows_per_flush INTO row_cap FROM pybatch.settings s;
    IF result.error IS NULL AND NOT COALESCE(result.skipped, true)
       AND row_cap IS NOT NULL AND result.rows_staged >= row_cap THEN
        next_pass := pg_catalog.clock_timestamp();  -- capped drain: more is waiting, go again now
    ELSE
        -- From this pass's start, so the flush's own time does not stretch the gap.
        next_pass := pass_started + flush_interval;
    END IF;
    IF next_pass > stop_at THEN
        RETURN NULL;
    END IF;
    RETURN next_pass;
END
$$;
COMMENT ON FUNCTION pybatch.flush_loop_next(pybatch.flush_result, interval, timestamptz, timestamptz) IS
    'Internal to flush_loop(): when the next flush is due after one that started at pass_started (at once after a capped drain), or NULL past stop_at.';
REVOKE EXECUTE ON FUNCTION pybatch.flush_loop_next(pybatch.flush_result, interval, timestamptz, timestamptz) FROM PUBLIC;
