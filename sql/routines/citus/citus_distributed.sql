-- ---------------------------------------------------------------------------
-- Is this database laid out for Citus (staging distributed)?
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pybatch.citus_distributed()
RETURNS boolean
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    found boolean;
BEGIN
    IF pg_catalog.to_regclass('pg_catalog.pg_dist_partition') IS NULL THEN
        RETURN false;  -- no citus extension: plain PostgreSQL
    END IF;
    EXECUTE 'SELECT EXISTS (SELECT FROM pg_catalog.pg_dist_partition p
                            WHERE p.logicalrelid = ''pybatch.heartbeats''::pg_catalog.regclass)'
        INTO found;
    RETURN found;
END
$fn$;
COMMENT ON FUNCTION pybatch.citus_distributed() IS
    'True when pybatch.heartbeats is a Citus distributed table (the flush then runs shard-local on the workers).';
