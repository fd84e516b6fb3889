-- Undo the baseline: schema pybatch with everything in it (routines and views
-- too), then public.workspace_agents only when pybatch created it (its views
-- depend on the table, so the schema goes first). `pybatch migrate --rollback`
-- removes pybatch's pg_cron jobs before (they live in another database). On
-- Citus, distributed tables are dropped over one connection per node, as Citus
-- requires inside a transaction.
DO $$
DECLARE
    created_target boolean;
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_extension e WHERE e.extname = 'citus') THEN
        PERFORM pg_catalog.set_config('citus.multi_shard_modify_mode', 'sequential', true);
    END IF;
    SELECT s.created_workspace_agents INTO created_target FROM pybatch.settings s;
    DROP SCHEMA pybatch CASCADE;
    IF created_target THEN
        DROP TABLE IF EXISTS public.workspace_agents;
    END IF;
END
$$;
