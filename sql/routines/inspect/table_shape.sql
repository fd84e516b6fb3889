-- ---------------------------------------------------------------------------
-- The target table's shape, measured (doctor reports it).
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pybatch.table_shape(max_pages integer DEFAULT 2000)
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
    target CONSTANT pg_catalog.regclass := 'public.workspace_agents'::pg_catalog.regclass;
    block integer := pg_catalog.current_setting('block_size')::integer;
    sample_percent numeric;
    sampled_rows bigint;
    row_bytes numeric;
BEGIN
    IF max_pages IS NULL OR max_pages < 1 THEN
        RAISE EXCEPTION 'pybatch.table_shape: max_pages must be 1 or more, not %', max_pages
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT COALESCE((SELECT o.option_value::integer FROM pg_catalog.pg_options_to_table(c.reloptions) o
                     WHERE o.option_name = 'fillfactor'), 100)
    INTO fillfactor FROM pg_catalog.pg_class c WHERE c.oid = target;
    heap_bytes := pg_catalog.pg_relation_size(target);
    heap_pages := heap_bytes / block;
    index_bytes := pg_catalog.pg_indexes_size(target);
    SELECT pg_catalog.count(*)::integer INTO index_count FROM pg_catalog.pg_index i WHERE i.indrelid = target;
    SELECT pg_catalog.array_agg(DISTINCT a.attname::text ORDER BY a.attname::text) INTO indexed_flushed_columns
    FROM pg_catalog.pg_index i
    JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid
         AND (a.attnum = ANY (i.indkey)
              OR pg_catalog.pg_get_expr(i.indexprs, i.indrelid) ~ ('\m' || a.attname || '\M')
              OR pg_catalog.pg_get_expr(i.indpred, i.indrelid) ~ ('\m' || a.attname || '\M'))
    WHERE i.indrelid = target
      AND a.attname IN ('first_connected_at', 'last_connected_at', 'disconnected_at',
                        'last_connected_replica_id', 'updated_at');
    indexed_flushed_columns := COALESCE(indexed_flushed_columns, '{}');

    IF heap_pages = 0 THEN
        sampled_pages := 0;
        live_rows := 0;
        method := 'empty table';
        RETURN NEXT;
        RETURN;
    END IF;
    -- Live row versions only (what a scan sees); whole pages, so per-page figures hold.
    sample_percent := LEAST(100, 100.0 * max_pages / heap_pages);
    SELECT pg_catalog.count(*), COALESCE(pg_catalog.sum(pg_catalog.pg_column_size(wa.*)), 0)
    INTO sampled_rows, row_bytes
    FROM public.workspace_agents wa TABLESAMPLE SYSTEM (sample_percent);
    -- The expected number of pages in the sample (exact at 100 %).
    sampled_pages := pg_catalog.round(heap_pages * sample_percent / 100)::bigint;
    IF sample_percent >= 100 THEN
        method := 'exact: every page read';
        live_rows := sampled_rows;
    ELSE
        method := 'estimate from a ' || pg_catalog.round(sample_percent, 2)::text || ' % block sample';
        live_rows := pg_catalog.round(sampled_rows * 100 / sample_percent)::bigint;
    END IF;
    rows_per_page := pg_catalog.round(sampled_rows::numeric / GREATEST(sampled_pages, 1), 1);
    avg_row_bytes := CASE WHEN sampled_rows > 0 THEN pg_catalog.round(row_bytes / sampled_rows) END;
    -- A page holds a 24-byte header; each row takes its size plus a 4-byte line pointer.
    unused_percent := GREATEST(0, pg_catalog.round(
        100 * (1 - (row_bytes + 4 * sampled_rows) / (GREATEST(sampled_pages, 1)::numeric * (block - 24))), 1));
    RETURN NEXT;
END
$$;
COMMENT ON FUNCTION pybatch.table_shape(integer) IS
    'Measures public.workspace_agents: fillfactor (reloptions; 100 when unset), heap and index sizes, live rows per page, their average size (pg_column_size of the row) and unused_percent: the share of the heap that live rows do not take (free space plus dead row versions not yet pruned). Reads every page up to max_pages, else a block sample of about max_pages pages (method says which). indexed_flushed_columns: columns the merge writes that an index covers (their updates can never be HOT).';
REVOKE EXECUTE ON FUNCTION pybatch.table_shape(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pybatch.table_shape(integer) TO pg_monitor;
