-- pybatch 0006: Citus. On a Citus coordinator whose public.workspace_agents is
-- distributed by id, staging (pybatch.heartbeats), pybatch.pending and
-- pybatch.quarantine become distributed tables co-located with it (by
-- agent_id), and a flush runs shard-local: every co-located group of shards
-- (staging, pending, quarantine, agents) is drained and merged, in the same
-- committed passes as on one server, by a procedure CALLed at top level on the
-- worker that holds it. No heartbeat row travels to the coordinator: it sends
-- one CALL per shard group and gets one composite value back.
--
-- Plain PostgreSQL (no citus extension), and a Citus coordinator whose
-- workspace_agents is a local table, flush exactly as 0004 does. The shard path
-- runs 0004's own relation-parameterised hand-off and pass (drain_into,
-- merge_pass_in, next_pass_in) on each shard group: one merge SQL for both.
-- This migration only replaces the flush_distributed() hook that 0004's entry
-- points ask first; docs/citus.md has the layout and the argument.
-- depends: 0004_flush_passes

-- ---------------------------------------------------------------------------
-- Per-shard figures of a Citus flush; flush_log keeps the totals. Empty on
-- plain PostgreSQL.
-- ---------------------------------------------------------------------------
CREATE TABLE pybatch.flush_log_shards (
    flush_id bigint NOT NULL REFERENCES pybatch.flush_log (id) ON DELETE CASCADE,
    shard_id bigint NOT NULL,
    node text NOT NULL,
    skipped boolean NOT NULL DEFAULT false,
    rows_staged bigint NOT NULL DEFAULT 0,
    agents_updated bigint NOT NULL DEFAULT 0,
    stale_heartbeats bigint NOT NULL DEFAULT 0,
    unknown_heartbeats bigint NOT NULL DEFAULT 0,
    future_heartbeats bigint NOT NULL DEFAULT 0,
    passes integer NOT NULL DEFAULT 0,
    hot_updates bigint NOT NULL DEFAULT 0,
    deferred_agents bigint NOT NULL DEFAULT 0,
    quarantined_agents bigint NOT NULL DEFAULT 0,
    newest_event_at timestamptz,
    duration interval,
    heap_bytes bigint,
    index_bytes bigint,
    error text,
    PRIMARY KEY (flush_id, shard_id)
);
COMMENT ON TABLE pybatch.flush_log_shards IS
    'Citus only: what each shard group did in a flush (flush_log holds the totals). shard_id is the staging shard; node is host:port of the worker that ran it. A failed shard kept its rows.';

-- The result a worker sends back for one shard group: its flush_result and sizes.
CREATE TYPE pybatch.shard_flush_result AS (
    result pybatch.flush_result,
    heap_bytes bigint,
    index_bytes bigint
);
COMMENT ON TYPE pybatch.shard_flush_result IS
    'Internal (Citus): what pybatch.shard_flush() returns to the coordinator for one shard group.';

-- ---------------------------------------------------------------------------
-- Is this database laid out for Citus (staging distributed)?
-- ---------------------------------------------------------------------------
CREATE FUNCTION pybatch.citus_distributed()
RETURNS boolean
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    found boolean;
BEGIN
    IF pg_catalog.to_regclass('pg_catalog.pg_dist_partition') IS NULL THEN
        RETURN false;  -- no citus extension: plain PostgreSQL
    END IF;
    EXECUTE 'SELECT EXISTS (SELECT FROM pg_catalog.pg_dist_partition p
                            WHERE p.logicalrelid = ''pybatch.heartbeats''::pg_catalog.regclass)'
        INTO found;
    RETURN found;
END
$fn$;
COMMENT ON FUNCTION pybatch.citus_distributed() IS
    'True when pybatch.heartbeats is a Citus distributed table (the flush then runs shard-local on the workers).';

-- ---------------------------------------------------------------------------
-- A lock that serializes flush steps on one set of relations. Plain PostgreSQL
-- keeps 0004's row lock on pybatch.flush_lock; a shard group locks its pending
-- shard (only flushes write pending). EXCLUSIVE: writers of staging and readers
-- are never blocked. Autovacuum holds a conflicting lock now and then; it is
-- cancelled for us after deadlock_timeout, so the wait is at least 2 s.
-- ---------------------------------------------------------------------------
CREATE FUNCTION pybatch.lock_pending(pending regclass, lock_wait interval)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    previous_timeout text := pg_catalog.current_setting('lock_timeout');
BEGIN
    -- Citus refuses LOCK TABLE on a shard unless told the caller knows.
    PERFORM pg_catalog.set_config('citus.enable_manual_changes_to_shards', 'on', true);
    PERFORM pg_catalog.set_config('lock_timeout',
        GREATEST(2000, pg_catalog.ceil(EXTRACT(EPOCH FROM COALESCE(lock_wait, interval '0')) * 1000))::bigint::text, true);
    BEGIN
        EXECUTE pg_catalog.format('LOCK TABLE %s IN EXCLUSIVE MODE', pending);
    EXCEPTION WHEN lock_not_available THEN
        PERFORM pg_catalog.set_config('lock_timeout', previous_timeout, true);
        RETURN false;
    END;
    PERFORM pg_catalog.set_config('lock_timeout', previous_timeout, true);
    RETURN true;
END
$fn$;
COMMENT ON FUNCTION pybatch.lock_pending(regclass, interval) IS
    'Internal (Citus): locks a pending shard for this transaction so one flush step at a time runs on its shard group; false after lock_wait (at least 2 s).';





-- ---------------------------------------------------------------------------
-- Citus: one shard group's flush, on the worker that holds it.
-- ---------------------------------------------------------------------------
CREATE FUNCTION pybatch.shard_begin(staging regclass, pending regclass, agents regclass, quarantine regclass,
                                    row_cap bigint, tolerance interval, lock_wait interval)
RETURNS pybatch.flush_result
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET work_mem = '64MB'
AS $fn$
DECLARE
    result pybatch.flush_result := pybatch.empty_result();
    drained record;
    error_state text;
    error_message text;
BEGIN
    IF NOT pybatch.lock_pending(pending, lock_wait) THEN
        result.skipped := true;
        result.duration := pg_catalog.clock_timestamp() - result.started_at;
        RETURN result;
    END IF;
    BEGIN
        SELECT * INTO STRICT drained FROM pybatch.drain_into(staging, pending, agents, quarantine, row_cap, tolerance);
        result.rows_staged := drained.rows_staged;
        result.future_heartbeats := drained.future_heartbeats;
        result.unknown_heartbeats := drained.unknown_heartbeats;
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        GET STACKED DIAGNOSTICS error_state = RETURNED_SQLSTATE, error_message = MESSAGE_TEXT;
        result.error := error_state || ': ' || error_message;
    END;
    RETURN result;
END
$fn$;
COMMENT ON FUNCTION pybatch.shard_begin(regclass, regclass, regclass, regclass, bigint, interval, interval) IS
    'Internal (Citus, on a worker): step 1 of a shard group''s flush: locks its pending shard and drains its staging shard.';

CREATE FUNCTION pybatch.shard_pass(result pybatch.flush_result, pending regclass, agents regclass,
                                   quarantine regclass)
RETURNS pybatch.flush_result
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF result.skipped OR result.error IS NOT NULL THEN
        RETURN result;
    END IF;
    IF NOT pybatch.lock_pending(pending, interval '1 minute') THEN
        result.error := '55P03: could not lock ' || pending::text;
        RETURN result;
    END IF;
    RETURN pybatch.next_pass_in(result, pending, agents, quarantine);
END
$fn$;
COMMENT ON FUNCTION pybatch.shard_pass(pybatch.flush_result, regclass, regclass, regclass) IS
    'Internal (Citus, on a worker): one committed pass of a shard group''s flush.';

CREATE PROCEDURE pybatch.shard_flush(staging regclass, pending regclass, agents regclass, quarantine regclass,
                                     row_cap bigint, tolerance interval, lock_wait interval,
                                     INOUT outcome pybatch.shard_flush_result DEFAULT NULL)
LANGUAGE plpgsql
AS $fn$
-- CALLed at top level on the worker (by pybatch.citus_flush() through
-- master_run_on_worker, one connection per shard group), so it may COMMIT:
-- the hand-off is durable before any merge and every pass commits, as on one
-- server. No SET clause (COMMIT forbids it); it calls only functions that pin
-- their own search_path.
DECLARE
    result pybatch.flush_result;
    passes_before integer;
BEGIN
    result := pybatch.shard_begin(staging, pending, agents, quarantine, row_cap, tolerance, lock_wait);
    COMMIT;
    LOOP
        passes_before := result.passes;
        result := pybatch.shard_pass(result, pending, agents, quarantine);
        COMMIT;
        EXIT WHEN result.skipped OR result.error IS NOT NULL OR result.passes = passes_before;
    END LOOP;
    result.duration := pg_catalog.clock_timestamp() - result.started_at;
    outcome := ROW(result, pg_catalog.pg_relation_size(agents), pg_catalog.pg_indexes_size(agents))::pybatch.shard_flush_result;
END
$fn$;
COMMENT ON PROCEDURE pybatch.shard_flush(regclass, regclass, regclass, regclass, bigint, interval, interval, pybatch.shard_flush_result) IS
    'Internal (Citus, on a worker): the whole flush of one shard group (staging, pending, agents, quarantine shards) in committed passes; returns its figures to the coordinator. Must be CALLed at top level.';

-- ---------------------------------------------------------------------------
-- Citus: the coordinator's flush. Holds pybatch.flush_lock (one flush at a
-- time, as on one server), sends one CALL of pybatch.shard_flush per shard
-- group to the worker holding it, all at once (one connection each: shards
-- flush in parallel across and within workers), and logs the totals in
-- flush_log and each group in flush_log_shards. A failed group keeps its rows
-- (its own transaction rolled back on its worker) and does not stop the others.
-- ---------------------------------------------------------------------------
CREATE FUNCTION pybatch.citus_flush(max_rows bigint, lock_wait interval)
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
                                   newest_event_at, heap_bytes, index_bytes)
    VALUES (result.started_at, result.duration, result.rows_staged, result.agents_updated,
            result.stale_heartbeats, result.unknown_heartbeats, result.future_heartbeats, result.error,
            result.passes, result.hot_updates, result.deferred_agents, result.quarantined_agents,
            result.newest_event_at, heap_total, index_total)
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

-- ---------------------------------------------------------------------------
-- The entry points (CALL pybatch.flush_in_passes(), SELECT pybatch.flush())
-- ask this first: with staging distributed, the flush runs on the workers.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pybatch.flush_distributed(max_rows bigint, lock_wait interval)
RETURNS pybatch.flush_result
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF pybatch.citus_distributed() THEN
        -- Shard-local: each worker commits its own passes (pybatch.shard_flush).
        RETURN pybatch.citus_flush(max_rows, lock_wait);
    END IF;
    RETURN NULL;
END
$fn$;

-- ---------------------------------------------------------------------------
-- Lay out pybatch's tables for Citus. Run by this migration; run it again
-- after distributing public.workspace_agents later. Distributing
-- workspace_agents stays the user's decision.
-- ---------------------------------------------------------------------------
CREATE FUNCTION pybatch.citus_distribute()
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
        'pybatch.drain_into(regclass, regclass, regclass, regclass, bigint, interval)',
        'pybatch.merge_pass_in(regclass, regclass, integer, uuid)',
        'pybatch.next_pass_in(pybatch.flush_result, regclass, regclass, regclass)',
        'pybatch.shard_begin(regclass, regclass, regclass, regclass, bigint, interval, interval)',
        'pybatch.shard_pass(pybatch.flush_result, regclass, regclass, regclass)',
        'pybatch.shard_flush(regclass, regclass, regclass, regclass, bigint, interval, interval, pybatch.shard_flush_result)']
    LOOP
        PERFORM pg_catalog.create_distributed_function(fn::pg_catalog.regprocedure);
    END LOOP;
    -- align_owner() (run by every `pybatch migrate`) grants on distributed tables
    -- (parallel, one connection per shard) and then alters distributed
    -- functions, which Citus allows only over one connection per node.
    ALTER FUNCTION pybatch.align_owner() SET citus.multi_shard_modify_mode = 'sequential';
    RETURN 'distributed';
END
$fn$;
COMMENT ON FUNCTION pybatch.citus_distribute() IS
    'Citus: when public.workspace_agents is hash-distributed by id, distributes pybatch.heartbeats, pending and quarantine by agent_id co-located with it and puts the shard-flush routines on every node. Returns plain, local (workspace_agents is a local table: pybatch works as on plain PostgreSQL) or distributed.';

CREATE FUNCTION pybatch.citus_distributed_table(tbl text)
RETURNS boolean
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    found boolean;
BEGIN
    IF pg_catalog.to_regclass('pg_catalog.pg_dist_partition') IS NULL THEN
        RETURN false;
    END IF;
    EXECUTE 'SELECT EXISTS (SELECT FROM pg_catalog.pg_dist_partition p WHERE p.logicalrelid = $1::pg_catalog.regclass)'
        INTO found USING tbl;
    RETURN found;
END
$fn$;
COMMENT ON FUNCTION pybatch.citus_distributed_table(text) IS
    'Internal: true when the named table is a Citus table (distributed or reference).';

-- ---------------------------------------------------------------------------
-- Citus: pybatch.table_shape() measured over the shards. On a coordinator the
-- table public.workspace_agents is an empty shell; its rows live in the
-- workers' shards. Each shard is measured where it lives (one command per
-- shard through run_command_on_shards: its heap and index size, and the live
-- rows of a block sample); the shell gives fillfactor and indexes (Citus
-- propagates both to the shards).
-- ---------------------------------------------------------------------------
CREATE FUNCTION pybatch.citus_table_shape(max_pages integer DEFAULT 2000)
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

-- Rights: the relation-parameterised bodies run with their caller's rights
-- (no SECURITY DEFINER), so calling them grants nothing; the commit procedure
-- and the lock are not public.
REVOKE EXECUTE ON PROCEDURE pybatch.shard_flush(regclass, regclass, regclass, regclass, bigint, interval, interval, pybatch.shard_flush_result) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pybatch.citus_distribute() FROM PUBLIC;
REVOKE ALL ON pybatch.flush_log_shards FROM PUBLIC;
GRANT SELECT ON pybatch.flush_log_shards TO pg_monitor;
DO $fn$
DECLARE
    table_owner text;
BEGIN
    SELECT c.relowner::pg_catalog.regrole::text INTO STRICT table_owner
    FROM pg_catalog.pg_class c WHERE c.oid = 'public.workspace_agents'::pg_catalog.regclass;
    EXECUTE pg_catalog.format('GRANT SELECT, INSERT, DELETE ON pybatch.flush_log_shards TO %s', table_owner);
    EXECUTE pg_catalog.format('GRANT EXECUTE ON PROCEDURE pybatch.shard_flush(regclass, regclass, regclass, regclass, bigint, interval, interval, pybatch.shard_flush_result) TO %s', table_owner);
    PERFORM pybatch.citus_distribute();
END
$fn$;
