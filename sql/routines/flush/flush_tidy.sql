-- ---------------------------------------------------------------------------
-- flush_tidy: every hand-off writes, and every pass deletes, a flush's worth of
-- pending rows; autovacuum (once a minute at best) would leave the file growing
-- by that much per flush, and each hand-off scanning it. With nothing pending
-- and the file past 8 MB, start again from an empty file. Below that, reading
-- the dead rows costs the next hand-off less than a TRUNCATE, which scans every
-- shared buffer and makes new files: 25 ms a flush with 16GB of shared_buffers
-- (a 10,000-agent flush took 21 % less CPU without it; docs/benchmarks.md).
-- Its own short transaction (the default path only): TRUNCATE locks out readers
-- of pending (the views) until commit. It gives way at once to anyone holding
-- pending or the flush lock: no step of another flush has pending rows in
-- flight, and no reader waits behind it.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pybatch.flush_tidy()
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    previous_timeout text := pg_catalog.current_setting('lock_timeout');
BEGIN
    -- TRUNCATE ignores snapshots: pending must be seen empty by a snapshot taken
    -- after the lock, which only read committed gives (a repeatable-read snapshot
    -- may predate another flush's hand-off). Otherwise leave it to autovacuum.
    IF pg_catalog.current_setting('transaction_isolation') <> 'read committed' THEN
        RETURN false;
    END IF;
    IF pg_catalog.pg_relation_size('pybatch.pending') < 8 * 1024 * 1024 THEN
        RETURN false;  -- small: autovacuum reclaims it, and the next hand-off reads it cheaply
    END IF;
    IF NOT pybatch.flush_take_lock(interval '100 milliseconds') THEN
        RETURN false;
    END IF;
    BEGIN
        PERFORM pg_catalog.set_config('lock_timeout', '100ms', true);
        IF EXISTS (SELECT FROM pybatch.pending) THEN
            PERFORM pg_catalog.set_config('lock_timeout', previous_timeout, true);
            RETURN false;
        END IF;
        TRUNCATE pybatch.pending;
    EXCEPTION WHEN lock_not_available THEN
        PERFORM pg_catalog.set_config('lock_timeout', previous_timeout, true);
        RETURN false;  -- a reader holds it: the next flush tries again
    END;
    PERFORM pg_catalog.set_config('lock_timeout', previous_timeout, true);
    RETURN true;
END
$$;
COMMENT ON FUNCTION pybatch.flush_tidy() IS
    'Internal, after a committed-pass flush: truncates pybatch.pending when it is empty and its file has passed 8 MB (it would otherwise grow by a flush''s worth of dead rows between autovacuum runs; below that, a TRUNCATE costs more than it saves); gives way to any lock holder. True when it truncated.';
REVOKE EXECUTE ON FUNCTION pybatch.flush_tidy() FROM PUBLIC;
