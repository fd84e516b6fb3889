-- ---------------------------------------------------------------------------
-- Citus: pybatch.table_shape() measured over the shards. On a coordinator the
-- table public.workspace_agents is an empty shell; its rows live in the
-- workers' shards. Each shard is measured where it lives (one command per
-- shard through run_command_on_shards: its heap and index size, and the live
-- rows of a block sample); the shell gives fillfactor and indexes (Citus
-- propagates both to the shards).
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pybatch.citus_table_shape(max_pages integer DEFAULT 2000)
RETURNS TABLE (
    fillfactor integer,
    heap_bytes bigint,
    heap_pages bigint,
    index_count integer,
    index_bytes bigint,
    sampled_pages bigint,
    live_rows bigint,
    rows_per_page numeric,
    avg_row_bytes numeric,
    unused_percent numeric,
    method text,
    indexed_flushed_columns text[]
)
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    block integer := pg_catalog.current_setting('block_size')::integer;
    shell record;
    total_pages bigint;
    sample_percent numeric;
    shards integer;
    nodes integer;
    failed text;
    sampled_rows bigint;
    row_bytes numeric;
BEGIN
    IF max_pages IS NULL OR max_pages < 1 THEN
        RAISE EXCEPTION 'pybatch.citus_table_shape: max_pages must be 1 or more, not %', max_pages
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT pybatch.citus_distributed_table('public.workspace_agents') THEN
        RAISE EXCEPTION 'pybatch.citus_table_shape: public.workspace_agents is not a Citus table; use pybatch.table_shape()'
            USING ERRCODE = 'wrong_object_type';
    END IF;
    -- The shell: fillfactor, indexes and the indexed columns the merge writes.
    SELECT * INTO STRICT shell FROM pybatch.table_shape(1);
    EXECUTE 'SELECT pg_catalog.citus_relation_size(''public.workspace_agents''::pg_catalog.regclass)'
        INTO heap_bytes;
    total_pages := heap_bytes / block;
    sample_percent := CASE WHEN total_pages = 0 THEN 100 ELSE LEAST(100, 100.0 * max_pages / total_pages) END;
    -- One command per shard: run_command_on_shards puts the shard's name in for %1$s and %1$L.
    EXECUTE $q$
        SELECT pg_catalog.count(*)::integer,
               pg_catalog.string_agg(pg_catalog.format('shard %s: %s', r.shardid, r.result), '; ')
                   FILTER (WHERE NOT r.success),
               COALESCE(pg_catalog.sum((r.result::jsonb ->> 'heap')::bigint) FILTER (WHERE r.success), 0),
               COALESCE(pg_catalog.sum((r.result::jsonb ->> 'index')::bigint) FILTER (WHERE r.success), 0),
               COALESCE(pg_catalog.sum((r.result::jsonb ->> 'rows')::bigint) FILTER (WHERE r.success), 0),
               COALESCE(pg_catalog.sum((r.result::jsonb ->> 'bytes')::numeric) FILTER (WHERE r.success), 0)
        FROM pg_catalog.run_command_on_shards('public.workspace_agents'::pg_catalog.regclass,
                 pg_catalog.format('SELECT pg_catalog.json_build_object(''heap'', pg_catalog.pg_relation_size(%%1$L), '
                                   '''index'', pg_catalog.pg_indexes_size(%%1$L), ''rows'', pg_catalog.count(*), '
                                   '''bytes'', COALESCE(pg_catalog.sum(pg_catalog.pg_column_size(t.*)), 0))::text '
                                   'FROM %%1$s t TABLESAMPLE SYSTEM (%s)', $1)) r
    $q$ INTO shards, failed, heap_bytes, index_bytes, sampled_rows, row_bytes USING sample_percent;
    IF failed IS NOT NULL THEN
        RAISE EXCEPTION 'pybatch.citus_table_shape: could not measure every shard of public.workspace_agents: %', failed
            USING ERRCODE = 'connection_failure';
    END IF;
    EXECUTE $q$SELECT pg_catalog.count(DISTINCT p.groupid)::integer FROM pg_catalog.pg_dist_shard s
               JOIN pg_catalog.pg_dist_placement p USING (shardid)
               WHERE s.logicalrelid = 'public.workspace_agents'::pg_catalog.regclass$q$ INTO nodes;
    fillfactor := shell.fillfactor;
    index_count := shell.index_count;
    indexed_flushed_columns := shell.indexed_flushed_columns;
    heap_pages := heap_bytes / block;
    IF heap_pages = 0 THEN
        sampled_pages := 0;
        live_rows := 0;
        method := pg_catalog.format('Citus: %s shards on %s node(s), empty', shards, nodes);
        RETURN NEXT;
        RETURN;
    END IF;
    sampled_pages := pg_catalog.round(heap_pages * sample_percent / 100)::bigint;
    IF sample_percent >= 100 THEN
        method := pg_catalog.format('Citus: %s shards on %s node(s), exact: every page read', shards, nodes);
        live_rows := sampled_rows;
    ELSE
        method := pg_catalog.format('Citus: %s shards on %s node(s), estimate from a %s %% block sample of each',
                                    shards, nodes, pg_catalog.round(sample_percent, 2));
        live_rows := pg_catalog.round(sampled_rows * 100 / sample_percent)::bigint;
    END IF;
    rows_per_page := pg_catalog.round(sampled_rows::numeric / GREATEST(sampled_pages, 1), 1);
    avg_row_bytes := CASE WHEN sampled_rows > 0 THEN pg_catalog.round(row_bytes / sampled_rows) END;
    unused_percent := GREATEST(0, pg_catalog.round(
        100 * (1 - (row_bytes + 4 * sampled_rows) / (GREATEST(sampled_pages, 1)::numeric * (block - 24))), 1));
    RETURN NEXT;
END
$$;
COMMENT ON FUNCTION pybatch.citus_table_shape(integer) IS
    'Citus: pybatch.table_shape() over the shards of a distributed public.workspace_agents (the coordinator''s table is an empty shell). Sizes are summed over the shards (run_command_on_shards); live rows come from every page up to max_pages in all, else the same block sample of each shard (method says which); fillfactor and indexes come from the shell, which Citus keeps in step with the shards.';
REVOKE EXECUTE ON FUNCTION pybatch.citus_table_shape(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pybatch.citus_table_shape(integer) TO pg_monitor;
