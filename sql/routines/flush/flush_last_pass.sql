-- ---------------------------------------------------------------------------
-- flush_last_pass: how many passes a hand-off numbered (a flush in lanes'
-- rounds), read as the table's owner: a flusher cannot read pending.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pybatch.flush_last_pass()
RETURNS integer
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT COALESCE(pg_catalog.max(p.pass_no), 0) FROM pybatch.pending p;
$$;
COMMENT ON FUNCTION pybatch.flush_last_pass() IS
    'Internal: the highest pass number waiting in pybatch.pending (0: none), so a flush in lanes knows its rounds.';
REVOKE EXECUTE ON FUNCTION pybatch.flush_last_pass() FROM PUBLIC;
