-- ---------------------------------------------------------------------------
-- A lock that serializes flush steps on one set of relations. Plain PostgreSQL
-- keeps the row lock on pybatch.flush_lock; a shard group locks its pending
-- shard (only flushes write pending). EXCLUSIVE: writers of staging and readers
-- are never blocked. Autovacuum holds a conflicting lock now and then; it is
-- cancelled for us after deadlock_timeout, so the wait is at least 2 s.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pybatch.lock_pending(pending regclass, lock_wait interval)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    previous_timeout text := pg_catalog.current_setting('lock_timeout');
BEGIN
    -- Citus refuses LOCK TABLE on a shard unless told the caller knows.
    PERFORM pg_catalog.set_config('citus.enable_manual_changes_to_shards', 'on', true);
    PERFORM pg_catalog.set_config('lock_timeout',
        GREATEST(2000, pg_catalog.ceil(EXTRACT(EPOCH FROM COALESCE(lock_wait, interval '0')) * 1000))::bigint::text, true);
    BEGIN
        EXECUTE pg_catalog.format('LOCK TABLE %s IN EXCLUSIVE MODE', pending);
    EXCEPTION WHEN lock_not_available THEN
        PERFORM pg_catalog.set_config('lock_timeout', previous_timeout, true);
        RETURN false;
    END;
    PERFORM pg_catalog.set_config('lock_timeout', previous_timeout, true);
    RETURN true;
END
$fn$;
COMMENT ON FUNCTION pybatch.lock_pending(regclass, interval) IS
    'Internal (Citus): locks a pending shard for this transaction so one flush step at a time runs on its shard group; false after lock_wait (at least 2 s).';
