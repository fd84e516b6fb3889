-- ---------------------------------------------------------------------------
-- scheduler_release: give up the `pybatch scheduler` lease on the way out, so a
-- standby scheduler takes over at once. By the holder's token (see
-- scheduler_claim): through a pooler the leader's last backend is not this one.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pybatch.scheduler_release(holder text)
RETURNS boolean
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH released AS (
        UPDATE pybatch.scheduler_lease l
        SET holder = NULL, holder_pid = NULL, expires_at = NULL
        WHERE l.holder = scheduler_release.holder
        RETURNING 1
    )
    SELECT EXISTS (SELECT FROM released);
$$;
COMMENT ON FUNCTION pybatch.scheduler_release(text) IS
    'Gives up the scheduler lease if the process named by holder holds it, so a standby takes over at once.';
REVOKE EXECUTE ON FUNCTION pybatch.scheduler_release(text) FROM PUBLIC;
