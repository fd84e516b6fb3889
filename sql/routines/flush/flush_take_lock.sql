-- ---------------------------------------------------------------------------
-- The lock. lock_wait NULL: wait as long as the session's lock_timeout allows.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pybatch.flush_take_lock(lock_wait interval)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    previous_timeout text := pg_catalog.current_setting('lock_timeout');
BEGIN
    IF lock_wait IS NOT NULL THEN
        -- 0 would mean "forever" to lock_timeout; 1 ms is the shortest real wait.
        PERFORM pg_catalog.set_config('lock_timeout',
            GREATEST(1, pg_catalog.ceil(EXTRACT(EPOCH FROM lock_wait) * 1000))::bigint::text, true);
    END IF;
    BEGIN
        PERFORM FROM pybatch.flush_lock FOR UPDATE;
    EXCEPTION WHEN lock_not_available THEN
        PERFORM pg_catalog.set_config('lock_timeout', previous_timeout, true);
        RETURN false;
    END;
    PERFORM pg_catalog.set_config('lock_timeout', previous_timeout, true);
    RETURN true;
END
$$;
COMMENT ON FUNCTION pybatch.flush_take_lock(interval) IS
    'Internal: locks the pybatch.flush_lock row for this transaction, waiting at most lock_wait (NULL: lock_timeout). False when it could not.';
REVOKE EXECUTE ON FUNCTION pybatch.flush_take_lock(interval) FROM PUBLIC;
