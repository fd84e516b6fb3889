-- ---------------------------------------------------------------------------
-- shard_pass (Citus): one pass of a shard group's flush, under its lock.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pybatch.shard_pass(result pybatch.flush_result, pending regclass, agents regclass,
                                   quarantine regclass)
RETURNS pybatch.flush_result
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF result.skipped OR result.error IS NOT NULL THEN
        RETURN result;
    END IF;
    IF NOT pybatch.lock_pending(pending, interval '1 minute') THEN
        result.error := '55P03: could not lock ' || pending::text;
        RETURN result;
    END IF;
    RETURN pybatch.next_pass_in(result, pending, agents, quarantine);
END
$fn$;
COMMENT ON FUNCTION pybatch.shard_pass(pybatch.flush_result, regclass, regclass, regclass) IS
    'Internal (Citus, on a worker): one committed pass of a shard group''s flush.';
