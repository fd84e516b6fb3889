-- pybatch 0002: pybatch.flush_loop(), the flush loop that pg_cron 1.4 runs once a minute.
-- pg_cron before 1.5 has no seconds schedules, so a per-minute job runs one
-- `CALL pybatch.flush_loop(...)` that flushes every N seconds, commits after each
-- pass and returns before the next minute's run. The loop also works on 1.5+.
-- depends: 0001_initial

-- ---------------------------------------------------------------------------
-- flush_loop_deadline: when a loop started now must stop starting passes.
-- Half a second before the next minute, so the last pass ends before pg_cron's
-- next run comes due (pg_cron never overlaps runs; it would queue the next one),
-- and the gap across the boundary stays within the interval + 0.5 s + pg_cron's
-- launch delay.
-- ---------------------------------------------------------------------------
CREATE FUNCTION pybatch.flush_loop_deadline(stop_at timestamptz DEFAULT NULL)
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

-- ---------------------------------------------------------------------------
-- flush_loop_pass: one flush, guarded. Returns when the next pass is due, or
-- NULL when the loop should end. Any error is caught here, recorded, and the
-- loop goes on: one failed pass must never stop flushing for the rest of the
-- minute (that would outlast the 30 s inactive timeout).
-- ---------------------------------------------------------------------------
CREATE FUNCTION pybatch.flush_loop_pass(flush_interval interval, stop_at timestamptz)
RETURNS timestamptz
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    pass_started timestamptz := pg_catalog.clock_timestamp();
    result pybatch.flush_result;
    row_cap bigint;
    next_pass timestamptz;
    error_state text;
    error_message text;
BEGIN
    BEGIN
        -- flush() already returns its own failures as rows (staging kept); this
        -- block guards everything else (settings gone, flush_log unwritable, ...).
        result := pybatch.flush(NULL, interval '0');
        SELECT s.max_rows_per_flush INTO row_cap FROM pybatch.settings s;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS error_state = RETURNED_SQLSTATE, error_message = MESSAGE_TEXT;
        RAISE WARNING 'pybatch.flush_loop: pass failed, the loop goes on: %: %', error_state, error_message;
        BEGIN
            INSERT INTO pybatch.flush_log (started_at, duration, error)
            VALUES (pass_started, pg_catalog.clock_timestamp() - pass_started,
                    'flush_loop: ' || error_state || ': ' || error_message);
        EXCEPTION WHEN OTHERS THEN
            NULL;  -- the warning above is the record of last resort
        END;
    END;

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
COMMENT ON FUNCTION pybatch.flush_loop_pass(interval, timestamptz) IS
    'Internal to flush_loop(): runs one guarded flush (errors are caught, warned and logged in flush_log) and returns when the next pass is due, or NULL past stop_at.';

-- ---------------------------------------------------------------------------
-- flush_loop: the procedure pg_cron CALLs once a minute.
-- No SET clause and no SECURITY DEFINER: PostgreSQL forbids COMMIT in a
-- procedure that has either. The body therefore only calls schema-qualified
-- functions that pin their own search_path; flush() itself is SECURITY DEFINER.
-- COMMIT after each pass: each flush is its own transaction, and the sleep holds
-- no locks.
-- ---------------------------------------------------------------------------
CREATE PROCEDURE pybatch.flush_loop(flush_interval interval, stop_at timestamptz DEFAULT NULL)
LANGUAGE plpgsql
AS $$
DECLARE
    deadline timestamptz := pybatch.flush_loop_deadline(stop_at);
    next_pass timestamptz;
BEGIN
    LOOP
        next_pass := pybatch.flush_loop_pass(flush_interval, deadline);
        COMMIT;
        EXIT WHEN next_pass IS NULL;
        PERFORM pg_catalog.pg_sleep_until(next_pass);
    END LOOP;
END
$$;
COMMENT ON PROCEDURE pybatch.flush_loop(interval, timestamptz) IS
    'Flushes every flush_interval, one transaction per pass, until stop_at (default: 0.5 s before the next minute). pg_cron 1.4 runs it once a minute; a failed pass never ends the loop.';

REVOKE EXECUTE ON FUNCTION pybatch.flush_loop_deadline(timestamptz) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pybatch.flush_loop_pass(interval, timestamptz) FROM PUBLIC;
REVOKE EXECUTE ON PROCEDURE pybatch.flush_loop(interval, timestamptz) FROM PUBLIC;
