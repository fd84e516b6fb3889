-- ---------------------------------------------------------------------------
-- flush_tidy: every hand-off writes, and every pass deletes, a flush's worth of
-- pending rows; autovacuum (once a minute at best) would leave the file growing
-- by that much per flush, and each hand-off scanning it. With nothing pending,
-- start again from an empty file. Its own short transaction (the default path
-- only): TRUNCATE locks out readers of pending (the views) until commit. It
-- gives way at once to anyone holding pending or the flush lock: no step of
-- another flush has pending rows in flight, and no reader waits behind it.
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
    'Internal, after a committed-pass flush: truncates pybatch.pending when it is empty (its file would otherwise grow by a flush''s worth of dead rows between autovacuum runs); gives way to any lock holder. True when it truncated.';
REVOKE EXECUTE ON FUNCTION pybatch.flush_tidy() FROM PUBLIC;
