-- Remove pybatch from this database: schema pybatch, yoyo's bookkeeping tables,
-- and public.workspace_agents only when pybatch created it (settings says so).
-- pybatch's pg_cron jobs live in another database; `pybatch uninstall` removes
-- them before running this. Runs in one transaction: all or nothing.
DO $$
DECLARE
    created_target boolean := false;
BEGIN
    IF pg_catalog.to_regclass('pybatch.settings') IS NOT NULL THEN
        SELECT s.created_workspace_agents INTO created_target FROM pybatch.settings s;
    END IF;
    -- The schema goes first: its views depend on public.workspace_agents.
    DROP SCHEMA IF EXISTS pybatch CASCADE;
    IF created_target THEN
        -- No CASCADE: an object of the user's that depends on the table stops the uninstall.
        DROP TABLE IF EXISTS public.workspace_agents;
    END IF;
END
$$;
DROP TABLE IF EXISTS public._yoyo_migration, public._yoyo_log, public._yoyo_version, public.yoyo_lock;
