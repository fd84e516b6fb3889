-- ---------------------------------------------------------------------------
-- Functions that write public.workspace_agents are owned by that table's owner
-- (see pybatch.align_owner()), so a trigger its owner adds runs with exactly
-- the owner's rights, never with those of whoever ran migrate.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pybatch.align_owner()
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    table_owner name;
    fn text;
BEGIN
    SELECT c.relowner::pg_catalog.regrole::text INTO STRICT table_owner
    FROM pg_catalog.pg_class c WHERE c.oid = 'public.workspace_agents'::pg_catalog.regclass;
    IF NOT pg_catalog.pg_has_role(current_user, table_owner::pg_catalog.regrole, 'MEMBER') THEN
        RAISE EXCEPTION 'role % cannot act as %, the owner of public.workspace_agents: run `pybatch migrate` as % or a superuser', current_user, table_owner, table_owner
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'pybatch''s merge functions must be owned by the table''s owner, so that its triggers never run with more rights than it has.';
    END IF;
    -- On Citus the grants below reach distributed tables (one connection per
    -- shard) and the ALTERs distributed functions, which Citus allows only over
    -- one connection per node: sequential for the rest of this transaction.
    IF EXISTS (SELECT FROM pg_catalog.pg_extension e WHERE e.extname = 'citus') THEN
        PERFORM pg_catalog.set_config('citus.multi_shard_modify_mode', 'sequential', true);
    END IF;
    -- What the merge needs, and nothing else (nothing when the table's owner owns
    -- pybatch's objects too: it has every right on them already).
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_namespace n
                   WHERE n.nspname = 'pybatch' AND n.nspowner::pg_catalog.regrole::text = table_owner) THEN
        EXECUTE pg_catalog.format('GRANT USAGE ON SCHEMA pybatch TO %s', table_owner);
        EXECUTE pg_catalog.format('GRANT SELECT ON pybatch.settings TO %s', table_owner);
        EXECUTE pg_catalog.format('GRANT SELECT, UPDATE ON pybatch.flush_lock TO %s', table_owner);
        EXECUTE pg_catalog.format('GRANT SELECT, DELETE ON pybatch.heartbeats TO %s', table_owner);
        EXECUTE pg_catalog.format('GRANT SELECT, INSERT, UPDATE, DELETE ON pybatch.pending, pybatch.quarantine TO %s', table_owner);
        EXECUTE pg_catalog.format('GRANT TRUNCATE ON pybatch.pending TO %s', table_owner);
        EXECUTE pg_catalog.format('GRANT SELECT, INSERT, UPDATE, DELETE ON pybatch.flush_log TO %s', table_owner);
        -- The Citus flush (citus_flush) logs per shard and CALLs shard_flush as the owner.
        EXECUTE pg_catalog.format('GRANT SELECT, INSERT, DELETE ON pybatch.flush_log_shards TO %s', table_owner);
        EXECUTE pg_catalog.format('GRANT EXECUTE ON PROCEDURE pybatch.shard_flush(regclass, regclass, regclass, regclass, bigint, interval, interval, pybatch.shard_flush_result) TO %s', table_owner);
    END IF;
    FOR fn IN SELECT m.routine::text FROM pybatch.merge_routines() m LOOP
        EXECUTE pg_catalog.format('ALTER FUNCTION %s OWNER TO %s', fn, table_owner);
    END LOOP;
    RETURN table_owner;
END
$$;
COMMENT ON FUNCTION pybatch.align_owner() IS
    'Run by `pybatch migrate`: gives the functions that write public.workspace_agents to that table''s owner (with the grants the merge needs) and returns the owner. Raises when the caller cannot act as the owner.';
REVOKE EXECUTE ON FUNCTION pybatch.align_owner() FROM PUBLIC;
