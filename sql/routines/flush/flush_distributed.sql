-- ---------------------------------------------------------------------------
-- The entry points (CALL pybatch.flush_in_passes(), SELECT pybatch.flush())
-- ask this first: with staging distributed, the flush runs on the workers.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pybatch.flush_distributed(max_rows bigint, lock_wait interval)
RETURNS pybatch.flush_result
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF pybatch.citus_distributed() THEN
        -- Shard-local: each worker commits its own passes (pybatch.shard_flush).
        RETURN pybatch.citus_flush(max_rows, lock_wait);
    END IF;
    RETURN NULL;
END
$fn$;
COMMENT ON FUNCTION pybatch.flush_distributed(bigint, interval) IS
    'Internal: the flush where staging is distributed (Citus: each shard group on its worker), or NULL when staging is in this database.';
REVOKE EXECUTE ON FUNCTION pybatch.flush_distributed(bigint, interval) FROM PUBLIC;
