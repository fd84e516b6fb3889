-- Remove pybatch from this database: schema pybatch, its own yoyo bookkeeping (schema
-- pybatch_migrations), and public.workspace_agents only when pybatch created it
-- (settings says so). Never another application's objects: yoyo's tables in public are
-- left alone (`pybatch uninstall` deletes only pybatch's own rows from them, for an
-- installation made before pybatch had its own bookkeeping).
--
-- CASCADE below reaches only pybatch's own objects: `pybatch uninstall` first lists
-- every object outside pybatch that depends on them (sql/uninstall_dependants.sql) and
-- refuses, unless --force, which sets pybatch.uninstall_force = 'on' for this
-- transaction and lets CASCADE drop them (a user's view, a column of a pybatch type, a
-- foreign key to a workspace_agents pybatch created).
-- pybatch's pg_cron jobs live in another database; `pybatch uninstall` removes them
-- before running this. Runs in one transaction: all or nothing.
DO $$
DECLARE
    created_target boolean := false;
    force boolean := COALESCE(pg_catalog.current_setting('pybatch.uninstall_force', true), '') = 'on';
BEGIN
    IF pg_catalog.to_regclass('pybatch.settings') IS NOT NULL THEN
        SELECT s.created_workspace_agents INTO created_target FROM pybatch.settings s;
    END IF;
    -- The schema goes first: its views depend on public.workspace_agents.
    DROP SCHEMA IF EXISTS pybatch CASCADE;
    DROP SCHEMA IF EXISTS pybatch_migrations CASCADE;
    IF created_target THEN
        IF force THEN
            DROP TABLE IF EXISTS public.workspace_agents CASCADE;
        ELSE
            DROP TABLE IF EXISTS public.workspace_agents;
        END IF;
    END IF;
END
$$;
