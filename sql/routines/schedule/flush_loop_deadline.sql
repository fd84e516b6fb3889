-- ---------------------------------------------------------------------------
-- flush_loop_deadline: when a loop started now must stop starting passes.
-- Half a second before the next minute, so the last pass ends before pg_cron's
-- next run comes due (pg_cron never overlaps runs; it would queue the next one),
-- and the gap across the boundary stays within the interval + 0.5 s + pg_cron's
-- launch delay.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pybatch.flush_loop_deadline(stop_at timestamptz DEFAULT NULL)
RETURNS timestamptz
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- The cron job's session gets a name `pybatch cron remove` can find and end.
    PERFORM pg_catalog.set_config('application_name', 'pybatch-flush-loop', false);
    RETURN COALESCE(stop_at,
        pg_catalog.date_trunc('minute', pg_catalog.clock_timestamp()) + interval '59.5 seconds');
END
$$;
COMMENT ON FUNCTION pybatch.flush_loop_deadline(timestamptz) IS
    'Internal to flush_loop(): names the session pybatch-flush-loop and returns the time after which no pass starts (stop_at, or 0.5 s before the next minute).';
REVOKE EXECUTE ON FUNCTION pybatch.flush_loop_deadline(timestamptz) FROM PUBLIC;
