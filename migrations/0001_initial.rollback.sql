-- Undo 0001. pybatch's pg_cron jobs are removed by `pybatch migrate --rollback`
-- before this runs (they live in another database). public.workspace_agents is
-- dropped only when pybatch created it.
DO $$
BEGIN
    IF (SELECT s.created_workspace_agents FROM pybatch.settings s) THEN
        DROP TABLE IF EXISTS public.workspace_agents;
    END IF;
END
$$;

DROP SCHEMA pybatch CASCADE;
