-- ---------------------------------------------------------------------------
-- flush_lock_holders: who holds (or waits for) the flush lock, for
-- `pybatch status` and psql.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE VIEW pybatch.flush_lock_holders AS
SELECT l.pid,
       a.wait_event_type IS DISTINCT FROM 'Lock' AS holding,  -- false: waiting for the holder
       a.usename AS role, a.application_name, a.client_addr,
       a.xact_start, a.state, pg_catalog.now() - a.xact_start AS for_how_long
FROM pg_catalog.pg_locks l
LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'relation'
  AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database())
  AND l.relation = 'pybatch.flush_lock'::pg_catalog.regclass
  AND l.pid <> pg_catalog.pg_backend_pid();
COMMENT ON VIEW pybatch.flush_lock_holders IS
    'Sessions holding (granted) or waiting for pybatch.flush_lock: who runs a flush step right now.';
COMMENT ON COLUMN pybatch.flush_lock_holders.pid IS 'Backend process id of the session.';
COMMENT ON COLUMN pybatch.flush_lock_holders.holding IS 'True: it holds pybatch.flush_lock (runs a flush step, or an open transaction that called SELECT pybatch.flush()); false: it waits for the holder.';
COMMENT ON COLUMN pybatch.flush_lock_holders.role IS 'The session''s role (pg_stat_activity.usename).';
COMMENT ON COLUMN pybatch.flush_lock_holders.application_name IS 'The session''s application_name (pg_cron, pybatch scheduler, an app...).';
COMMENT ON COLUMN pybatch.flush_lock_holders.client_addr IS 'The client''s address; NULL over a Unix socket.';
COMMENT ON COLUMN pybatch.flush_lock_holders.xact_start IS 'When its transaction started.';
COMMENT ON COLUMN pybatch.flush_lock_holders.state IS 'pg_stat_activity.state: active, idle in transaction, ...';
COMMENT ON COLUMN pybatch.flush_lock_holders.for_how_long IS 'now() - xact_start: how long its transaction has held (or waited for) the lock.';
GRANT SELECT ON pybatch.flush_lock_holders TO pg_monitor;
