-- ---------------------------------------------------------------------------
-- scheduler_claim: take or renew the `pybatch scheduler` lease
-- (pybatch.scheduler_lease). The leader renews it every interval; a standby
-- takes it when it expires or when the holder's session is gone.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pybatch.scheduler_claim(holder text, ttl interval)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    my_start timestamptz;
BEGIN
    SELECT a.backend_start INTO my_start FROM pg_catalog.pg_stat_activity a
    WHERE a.pid = pg_catalog.pg_backend_pid();
    UPDATE pybatch.scheduler_lease l SET
        holder = scheduler_claim.holder,
        holder_pid = pg_catalog.pg_backend_pid(),
        holder_backend_start = my_start,
        renewed_at = pg_catalog.clock_timestamp(),
        expires_at = pg_catalog.clock_timestamp() + ttl
    WHERE l.holder_pid IS NULL
       OR l.expires_at < pg_catalog.clock_timestamp()
       OR (l.holder_pid = pg_catalog.pg_backend_pid() AND l.holder_backend_start = my_start)
       OR NOT EXISTS (SELECT FROM pg_catalog.pg_stat_activity a
                      WHERE a.pid = l.holder_pid AND a.backend_start = l.holder_backend_start);
    RETURN FOUND;
END
$$;
COMMENT ON FUNCTION pybatch.scheduler_claim(text, interval) IS
    'Takes or renews the scheduler lease for this session for ttl; false while another live scheduler holds it.';
REVOKE EXECUTE ON FUNCTION pybatch.scheduler_claim(text, interval) FROM PUBLIC;
