-- ---------------------------------------------------------------------------
-- Lay out pybatch's tables for Citus. Run by every `pybatch migrate`; run it again
-- after distributing public.workspace_agents later. Distributing
-- workspace_agents stays the user's decision.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pybatch.citus_distribute()
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    method text;
    dist_column text;
    tbl text;
    fn text;
    had_rows boolean;
BEGIN
    IF pg_catalog.to_regclass('pg_catalog.pg_dist_partition') IS NULL THEN
        RETURN 'plain';
    END IF;
    EXECUTE $q$SELECT p.partmethod::text, pg_catalog.column_to_column_name(p.logicalrelid, p.partkey)
               FROM pg_catalog.pg_dist_partition p
               WHERE p.logicalrelid = 'public.workspace_agents'::pg_catalog.regclass$q$
        INTO method, dist_column;
    IF method IS NULL THEN
        RAISE NOTICE 'pybatch: public.workspace_agents is a local table on this Citus coordinator; pybatch works as on plain PostgreSQL (staging and flush on the coordinator)'
            USING HINT = 'To spread it: SELECT create_distributed_table(''public.workspace_agents'', ''id''); then SELECT pybatch.citus_distribute();';
        RETURN 'local';
    END IF;
    IF method <> 'h' OR dist_column IS DISTINCT FROM 'id' THEN
        RAISE EXCEPTION 'pybatch: public.workspace_agents is distributed by % (method %); pybatch needs it hash-distributed by id, or local',
            COALESCE(dist_column, 'no column'), method
            USING ERRCODE = 'feature_not_supported';
    END IF;
    FOREACH tbl IN ARRAY ARRAY['pybatch.heartbeats', 'pybatch.pending', 'pybatch.quarantine'] LOOP
        IF NOT pybatch.citus_distributed_table(tbl) THEN
            EXECUTE pg_catalog.format('SELECT EXISTS (SELECT FROM %s)', tbl) INTO had_rows;
            PERFORM pg_catalog.create_distributed_table(tbl::pg_catalog.regclass, 'agent_id',
                                                        colocate_with => 'public.workspace_agents');
            IF had_rows THEN
                PERFORM pg_catalog.truncate_local_data_after_distributing_table(tbl::pg_catalog.regclass);
            END IF;
        END IF;
    END LOOP;
    -- What a worker runs for its shard groups must exist there.
    FOREACH fn IN ARRAY ARRAY[
        'pybatch.empty_result()',
        'pybatch.lock_pending(regclass, interval)',
        'pybatch.drain_into(regclass, regclass, regclass, regclass, bigint, interval, integer)',
        'pybatch.merge_pass_in(regclass, regclass, integer, uuid)',
        'pybatch.pass_in(pybatch.flush_result, regclass, regclass, regclass, integer)',
        'pybatch.next_pass_in(pybatch.flush_result, regclass, regclass, regclass)',
        'pybatch.shard_begin(regclass, regclass, regclass, regclass, bigint, interval, interval)',
        'pybatch.shard_pass(pybatch.flush_result, regclass, regclass, regclass)',
        'pybatch.shard_flush(regclass, regclass, regclass, regclass, bigint, interval, interval, pybatch.shard_flush_result)']
    LOOP
        PERFORM pg_catalog.create_distributed_function(fn::pg_catalog.regprocedure);
    END LOOP;
    RETURN 'distributed';
END
$fn$;
COMMENT ON FUNCTION pybatch.citus_distribute() IS
    'Citus: when public.workspace_agents is hash-distributed by id, distributes pybatch.heartbeats, pending and quarantine by agent_id co-located with it and puts the shard-flush routines on every node. Returns plain, local (workspace_agents is a local table: pybatch works as on plain PostgreSQL) or distributed.';
REVOKE EXECUTE ON FUNCTION pybatch.citus_distribute() FROM PUBLIC;
