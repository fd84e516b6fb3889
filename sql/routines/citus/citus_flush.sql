-- ---------------------------------------------------------------------------
-- Citus: the coordinator's flush. Holds pybatch.flush_lock (one flush at a
-- time, as on one server), sends one CALL of pybatch.shard_flush per shard
-- group to the worker holding it, all at once (one connection each: shards
-- flush in parallel across and within workers), and logs the totals in
-- flush_log and each group in flush_log_shards. A failed group keeps its rows
-- (its own transaction rolled back on its worker) and does not stop the others.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pybatch.citus_flush(max_rows bigint, lock_wait interval)
RETURNS pybatch.flush_result
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    result pybatch.flush_result := pybatch.empty_result();
    cfg pybatch.settings;
    group_shards bigint[] := '{}';
    node_names text[] := '{}';
    node_ports integer[] := '{}';
    commands text[] := '{}';
    g record;
    r record;
    shard pybatch.shard_flush_result;
    res pybatch.flush_result;
    shard_heap bigint;
    shard_index bigint;
    shards_failed integer := 0;
    errors text[] := '{}';
    per_shard jsonb := '[]';
    heap_total bigint := 0;
    index_total bigint := 0;
    retention interval;
BEGIN
    IF max_rows < 0 THEN
        RAISE EXCEPTION 'pybatch.flush: max_rows must be 0 or more, not %', max_rows
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT pybatch.flush_take_lock(COALESCE(lock_wait, interval '0')) THEN
        result.skipped := true;
        result.duration := pg_catalog.clock_timestamp() - result.started_at;
        RETURN result;
    END IF;
    SELECT * INTO STRICT cfg FROM pybatch.settings;

    -- The shard groups: co-located shards share their hash range.
    -- max_rows bounds the whole flush: it is split evenly over the shard groups.
    FOR g IN EXECUTE $q$
        SELECT hs.shardid, (pg_catalog.row_number() OVER (ORDER BY hs.shardid) - 1)::integer AS k,
               pg_catalog.count(*) OVER ()::integer AS groups,
               pg_catalog.shard_name('pybatch.heartbeats'::pg_catalog.regclass, hs.shardid) AS staging,
               pg_catalog.shard_name('pybatch.pending'::pg_catalog.regclass, ps.shardid) AS pending,
               pg_catalog.shard_name('public.workspace_agents'::pg_catalog.regclass, ws.shardid) AS agents,
               pg_catalog.shard_name('pybatch.quarantine'::pg_catalog.regclass, qs.shardid) AS quarantine,
               n.nodename, n.nodeport
        FROM pg_catalog.pg_dist_shard hs
        JOIN pg_catalog.pg_dist_shard ps ON ps.logicalrelid = 'pybatch.pending'::pg_catalog.regclass
             AND ps.shardminvalue = hs.shardminvalue
        JOIN pg_catalog.pg_dist_shard ws ON ws.logicalrelid = 'public.workspace_agents'::pg_catalog.regclass
             AND ws.shardminvalue = hs.shardminvalue
        JOIN pg_catalog.pg_dist_shard qs ON qs.logicalrelid = 'pybatch.quarantine'::pg_catalog.regclass
             AND qs.shardminvalue = hs.shardminvalue
        JOIN pg_catalog.pg_dist_placement pl ON pl.shardid = hs.shardid
        JOIN pg_catalog.pg_dist_node n ON n.groupid = pl.groupid AND n.noderole = 'primary' AND n.isactive
        WHERE hs.logicalrelid = 'pybatch.heartbeats'::pg_catalog.regclass
        ORDER BY hs.shardid
    $q$ LOOP
        group_shards := group_shards || g.shardid;
        node_names := node_names || g.nodename::text;
        node_ports := node_ports || g.nodeport::integer;
        commands := commands || pg_catalog.format(
            'CALL pybatch.shard_flush(%L, %L, %L, %L, %s, %L, %L, NULL)',
            g.staging, g.pending, g.agents, g.quarantine,
            COALESCE(max_rows, cfg.max_rows_per_flush) / g.groups
                + CASE WHEN g.k < COALESCE(max_rows, cfg.max_rows_per_flush) % g.groups THEN 1 ELSE 0 END,
            cfg.future_tolerance, COALESCE(lock_wait, interval '0'));
    END LOOP;
    IF pg_catalog.cardinality(commands) = 0 THEN
        result.error := 'pybatch: no shard placements found for pybatch.heartbeats';
    ELSE
        FOR r IN EXECUTE
            'SELECT w.node_name, w.node_port, w.success, w.result, w.n
             FROM pg_catalog.master_run_on_worker($1, $2, $3, true) WITH ORDINALITY AS w(node_name, node_port, success, result, n)'
            USING node_names, node_ports, commands
        LOOP
            res := NULL;
            shard_heap := NULL;
            shard_index := NULL;
            IF r.success THEN
                BEGIN
                    shard := r.result::pybatch.shard_flush_result;
                    res := (shard).result;
                    shard_heap := (shard).heap_bytes;
                    shard_index := (shard).index_bytes;
                EXCEPTION WHEN OTHERS THEN
                    res := NULL;
                END;
            END IF;
            IF res IS NULL OR res.started_at IS NULL THEN
                -- The CALL failed on its worker (its transaction rolled back: the
                -- shard group kept its rows) or the worker could not be reached.
                res := pybatch.empty_result();
                res.error := COALESCE(NULLIF(r.result, ''), 'no result');
            END IF;
            per_shard := per_shard || pg_catalog.jsonb_build_object(
                'shard_id', group_shards[r.n], 'node', r.node_name || ':' || r.node_port,
                'result', pg_catalog.to_jsonb(res), 'heap_bytes', shard_heap, 'index_bytes', shard_index);
            IF res.error IS NOT NULL THEN
                shards_failed := shards_failed + 1;
                errors := errors || pg_catalog.format('shard %s on %s:%s: %s', group_shards[r.n],
                                                      r.node_name, r.node_port, res.error);
            END IF;
            result.rows_staged := result.rows_staged + COALESCE(res.rows_staged, 0);
            result.agents_updated := result.agents_updated + COALESCE(res.agents_updated, 0);
            result.stale_heartbeats := result.stale_heartbeats + COALESCE(res.stale_heartbeats, 0);
            result.unknown_heartbeats := result.unknown_heartbeats + COALESCE(res.unknown_heartbeats, 0);
            result.future_heartbeats := result.future_heartbeats + COALESCE(res.future_heartbeats, 0);
            result.passes := GREATEST(result.passes, COALESCE(res.passes, 0));
            result.hot_updates := result.hot_updates + COALESCE(res.hot_updates, 0);
            result.deferred_agents := result.deferred_agents + COALESCE(res.deferred_agents, 0);
            result.quarantined_agents := result.quarantined_agents + COALESCE(res.quarantined_agents, 0);
            result.newest_event_at := GREATEST(result.newest_event_at, res.newest_event_at);
            heap_total := heap_total + COALESCE(shard_heap, 0);
            index_total := index_total + COALESCE(shard_index, 0);
        END LOOP;
        IF shards_failed > 0 THEN
            result.error := pg_catalog.format('%s of %s shard groups failed (they kept their rows): %s',
                                              shards_failed, pg_catalog.cardinality(commands),
                                              pg_catalog.array_to_string(errors, '; '));
        END IF;
    END IF;
    result.duration := pg_catalog.clock_timestamp() - result.started_at;

    INSERT INTO pybatch.flush_log (started_at, duration, rows_staged, agents_updated,
                                   stale_heartbeats, unknown_heartbeats, future_heartbeats, error,
                                   passes, hot_updates, deferred_agents, quarantined_agents,
                                   newest_event_at, heap_bytes, index_bytes, completed_at)
    VALUES (result.started_at, result.duration, result.rows_staged, result.agents_updated,
            result.stale_heartbeats, result.unknown_heartbeats, result.future_heartbeats, result.error,
            result.passes, result.hot_updates, result.deferred_agents, result.quarantined_agents,
            result.newest_event_at, heap_total, index_total, pg_catalog.clock_timestamp())
    RETURNING id INTO result.flush_id;
    INSERT INTO pybatch.flush_log_shards (flush_id, shard_id, node, skipped, rows_staged, agents_updated,
                                          stale_heartbeats, unknown_heartbeats, future_heartbeats, passes,
                                          hot_updates, deferred_agents, quarantined_agents, newest_event_at,
                                          duration, heap_bytes, index_bytes, error)
    SELECT result.flush_id, (e ->> 'shard_id')::bigint, e ->> 'node',
           COALESCE((e -> 'result' ->> 'skipped')::boolean, false),
           COALESCE((e -> 'result' ->> 'rows_staged')::bigint, 0),
           COALESCE((e -> 'result' ->> 'agents_updated')::bigint, 0),
           COALESCE((e -> 'result' ->> 'stale_heartbeats')::bigint, 0),
           COALESCE((e -> 'result' ->> 'unknown_heartbeats')::bigint, 0),
           COALESCE((e -> 'result' ->> 'future_heartbeats')::bigint, 0),
           COALESCE((e -> 'result' ->> 'passes')::integer, 0),
           COALESCE((e -> 'result' ->> 'hot_updates')::bigint, 0),
           COALESCE((e -> 'result' ->> 'deferred_agents')::bigint, 0),
           COALESCE((e -> 'result' ->> 'quarantined_agents')::bigint, 0),
           (e -> 'result' ->> 'newest_event_at')::timestamptz,
           (e -> 'result' ->> 'duration')::interval,
           (e ->> 'heap_bytes')::bigint, (e ->> 'index_bytes')::bigint,
           e -> 'result' ->> 'error'
    FROM pg_catalog.jsonb_array_elements(per_shard) e;
    SELECT s.history_retention INTO retention FROM pybatch.settings s;
    DELETE FROM pybatch.flush_log WHERE started_at < result.started_at - retention;
    RETURN result;
END
$fn$;
COMMENT ON FUNCTION pybatch.citus_flush(bigint, interval) IS
    'Citus: flushes every shard group on its own worker, in parallel (one CALL pybatch.shard_flush per group through master_run_on_worker), and logs totals in flush_log and each group in flush_log_shards. Runs with the caller''s rights: pybatch.flush() calls it as the owner of public.workspace_agents.';
