-- Undo 0004: the column and the old entry point back, as they were (it releases
-- what this session's backend holds).
ALTER TABLE pybatch.scheduler_lease ADD COLUMN holder_backend_start timestamptz;
CREATE FUNCTION pybatch.scheduler_release()
RETURNS boolean
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH released AS (
        UPDATE pybatch.scheduler_lease l
        SET holder = NULL, holder_pid = NULL, holder_backend_start = NULL, expires_at = NULL
        WHERE l.holder_pid = pg_catalog.pg_backend_pid()
        RETURNING 1
    )
    SELECT EXISTS (SELECT FROM released);
$$;
COMMENT ON FUNCTION pybatch.scheduler_release() IS
    'Gives up the scheduler lease if this session holds it, so a standby takes over at once.';
REVOKE EXECUTE ON FUNCTION pybatch.scheduler_release() FROM PUBLIC;
