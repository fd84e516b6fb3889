-- ---------------------------------------------------------------------------
-- check_merge_routines: refuse to flush (or disconnect) when a function that
-- writes public.workspace_agents would not run as exactly the table's owner.
--
-- The table's triggers fire with the rights of whoever the merge runs as. The
-- merge functions are SECURITY DEFINER, owned by the table's owner, with a
-- pinned search_path, so that is the owner. Two ways break it: the owner (who
-- owns them) makes one SECURITY INVOKER or unpins it, and a superuser's flush
-- then runs the owner's trigger as superuser; or the table changes hands and
-- the functions still belong to the previous owner (a superuser, say) until
-- `pybatch migrate` runs. The callers check, not the functions themselves: the
-- table's owner could rewrite a function it owns, but not flush_in_passes() or
-- flush(), which the migrating role owns. It runs with the caller's rights.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pybatch.check_merge_routines()
RETURNS void
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    table_owner oid;
    bad record;
BEGIN
    SELECT c.relowner INTO STRICT table_owner
    FROM pg_catalog.pg_class c WHERE c.oid = 'public.workspace_agents'::pg_catalog.regclass;
    SELECT m.routine, p.proowner::pg_catalog.regrole AS owner, p.prosecdef, p.proconfig,
           m.definer AND NOT p.prosecdef AS invoker
    INTO bad
    FROM pybatch.merge_routines() m
    JOIN pg_catalog.pg_proc p ON p.oid = m.routine
    WHERE p.proowner <> table_owner
       OR (m.definer AND NOT p.prosecdef)
       OR NOT COALESCE('search_path=pg_catalog, pg_temp' = ANY (p.proconfig), false)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'pybatch: refusing to run: % %; run `pybatch migrate`',
            bad.routine,
            CASE WHEN bad.owner::pg_catalog.oid <> table_owner
                 THEN pg_catalog.format('is owned by %s, not by %s, the owner of public.workspace_agents',
                                        bad.owner, table_owner::pg_catalog.regrole)
                 WHEN bad.invoker THEN 'is no longer SECURITY DEFINER'
                 ELSE 'no longer pins its search_path' END
            USING ERRCODE = 'insufficient_privilege',
                  HINT = '`pybatch migrate` restores pybatch''s routines and gives them to the table''s owner.';
    END IF;
END
$$;
COMMENT ON FUNCTION pybatch.check_merge_routines() IS
    'Raises (insufficient_privilege) unless every function that writes public.workspace_agents is owned by that table''s owner, SECURITY DEFINER where callers reach it, with a pinned search_path. flush_in_passes(), flush() and disconnect() call it first.';
