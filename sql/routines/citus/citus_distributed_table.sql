-- ---------------------------------------------------------------------------
-- citus_distributed_table (Citus): whether a table is distributed.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pybatch.citus_distributed_table(tbl text)
RETURNS boolean
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    found boolean;
BEGIN
    IF pg_catalog.to_regclass('pg_catalog.pg_dist_partition') IS NULL THEN
        RETURN false;
    END IF;
    EXECUTE 'SELECT EXISTS (SELECT FROM pg_catalog.pg_dist_partition p WHERE p.logicalrelid = $1::pg_catalog.regclass)'
        INTO found USING tbl;
    RETURN found;
END
$fn$;
COMMENT ON FUNCTION pybatch.citus_distributed_table(text) IS
    'Internal: true when the named table is a Citus table (distributed or reference).';
