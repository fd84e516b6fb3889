-- ---------------------------------------------------------------------------
-- flush_loop: the procedure a pg_cron 1.4 job CALLs once a minute. pg_cron
-- before 1.5 has no seconds schedules, so one per-minute run flushes every
-- flush_interval, committing after each flush, and returns before the next
-- minute's run. It also works on 1.5+.
--
-- No SET clause and no SECURITY DEFINER: PostgreSQL forbids COMMIT in a
-- procedure with either. The body only calls schema-qualified routines that
-- pin their own search_path.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE PROCEDURE pybatch.flush_loop(flush_interval interval, stop_at timestamptz DEFAULT NULL)
LANGUAGE plpgsql
AS $$
DECLARE
    -- Types and operators qualified: the body runs under the caller's search_path.
    deadline pg_catalog.timestamptz := pybatch.flush_loop_deadline(stop_at);
    pass_started pg_catalog.timestamptz;
    result pybatch.flush_result;
    next_pass pg_catalog.timestamptz;
BEGIN
    LOOP
        pass_started := pg_catalog.clock_timestamp();
        result := NULL;
        CALL pybatch.flush_in_passes(NULL, interval '0', result);  -- commits its own steps
        next_pass := pybatch.flush_loop_next(result, flush_interval, deadline, pass_started);
        COMMIT;
        EXIT WHEN next_pass IS NULL;
        PERFORM pg_catalog.pg_sleep_until(next_pass);
    END LOOP;
END
$$;
COMMENT ON PROCEDURE pybatch.flush_loop(interval, timestamptz) IS
    'Flushes (CALL pybatch.flush_in_passes) every flush_interval until stop_at (default: 0.5 s before the next minute). pg_cron 1.4 runs it once a minute; a failed flush never ends the loop.';
REVOKE EXECUTE ON PROCEDURE pybatch.flush_loop(interval, timestamptz) FROM PUBLIC;
