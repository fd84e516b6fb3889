-- ---------------------------------------------------------------------------
-- scheduler_claim: take or renew the `pybatch scheduler` lease
-- (pybatch.scheduler_lease) for `holder`, a token naming one scheduler process
-- (host:pid:random). The holder is that token, not a server backend: through a
-- transaction pooler a scheduler's statements reach different backends, and it
-- still renews its own lease. A standby takes the lease when it expires, or at
-- once when the backend that last renewed it is gone (the leader died on a
-- direct connection). That check reads only pids, which pg_stat_activity shows
-- to every role: judged by backend_start, which it hides from a role without
-- pg_read_all_stats, every claim looked like a takeover and all schedulers led.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pybatch.scheduler_claim(holder text, ttl interval)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF scheduler_claim.holder IS NULL OR scheduler_claim.holder = '' THEN
        RAISE EXCEPTION 'pybatch.scheduler_claim: holder must be a non-empty token naming the scheduler process'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    UPDATE pybatch.scheduler_lease l SET
        holder = scheduler_claim.holder,
        holder_pid = pg_catalog.pg_backend_pid(),
        renewed_at = pg_catalog.clock_timestamp(),
        expires_at = pg_catalog.clock_timestamp() + ttl
    WHERE l.holder IS NULL
       OR l.expires_at < pg_catalog.clock_timestamp()
       OR l.holder = scheduler_claim.holder  -- the same process, whichever backend it reached
       OR NOT EXISTS (SELECT FROM pg_catalog.pg_stat_activity a WHERE a.pid = l.holder_pid);
    RETURN FOUND;
END
$$;
COMMENT ON FUNCTION pybatch.scheduler_claim(text, interval) IS
    'Takes or renews the scheduler lease for the process named by holder, for ttl; false while another live scheduler holds it.';
REVOKE EXECUTE ON FUNCTION pybatch.scheduler_claim(text, interval) FROM PUBLIC;
