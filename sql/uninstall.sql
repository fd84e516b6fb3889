-- Remove pybatch from this database: schema pybatch, yoyo's bookkeeping tables,
-- and public.workspace_agents only when pybatch created it (settings says so).
-- pybatch's pg_cron jobs live in another database; `pybatch uninstall` removes
-- them before running this. Runs in one transaction: all or nothing.
DO $$
BEGIN
    IF pg_catalog.to_regclass('pybatch.settings') IS NOT NULL THEN
        IF (SELECT s.created_workspace_agents FROM pybatch.settings s) THEN
            DROP TABLE IF EXISTS public.workspace_agents;
        END IF;
    END IF;
END
$$;
DROP SCHEMA IF EXISTS pybatch CASCADE;
DROP TABLE IF EXISTS public._yoyo_migration, public._yoyo_log, public._yoyo_version, public.yoyo_lock;
