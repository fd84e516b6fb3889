-- pybatch: the canonical current schema, for reading and for tools that want
-- the whole schema at once (`psql -f sql/schema.sql` on an empty database).
-- It must build the same catalog as applying every migration in migrations/:
-- tests/integration/test_schema_catalog.py checks that. Rebuild it with
-- scripts/sync_schema.sh after adding a migration.

-- ===========================================================================
-- from migrations/0001_initial.sql
-- ===========================================================================
-- pybatch 0001: staging table, settings, flush log, flush() and disconnect().
-- Every object lives in schema "pybatch" and is schema-qualified; every function
-- pins search_path so a caller's objects can never shadow ours.

CREATE SCHEMA pybatch;
COMMENT ON SCHEMA pybatch IS
    'pybatch: heartbeats are staged in pybatch.heartbeats and merged into public.workspace_agents by pybatch.flush().';

-- ---------------------------------------------------------------------------
-- Settings: one row, typed columns, readable from psql.
-- ---------------------------------------------------------------------------
CREATE TABLE pybatch.settings (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    flush_interval interval NOT NULL DEFAULT '10 seconds'
        CHECK (flush_interval > interval '0'),
    inactive_timeout interval NOT NULL DEFAULT '30 seconds'
        CHECK (inactive_timeout > interval '0'),
    future_tolerance interval NOT NULL DEFAULT '5 seconds'
        CHECK (future_tolerance >= interval '0'),
    history_retention interval NOT NULL DEFAULT '7 days'
        CHECK (history_retention > interval '0'),
    max_rows_per_flush bigint DEFAULT 1000000
        CHECK (max_rows_per_flush > 0),
    created_workspace_agents boolean NOT NULL DEFAULT false
);
INSERT INTO pybatch.settings DEFAULT VALUES;
COMMENT ON TABLE pybatch.settings IS
    'pybatch settings, one row. Change with `pybatch config set KEY VALUE` or UPDATE.';
COMMENT ON COLUMN pybatch.settings.flush_interval IS
    'How often the scheduler (pg_cron or `pybatch scheduler`) flushes; health checks use it to judge lateness.';
COMMENT ON COLUMN pybatch.settings.inactive_timeout IS
    'An agent with no heartbeat for this long counts as disconnected (Coder: 30 s).';
COMMENT ON COLUMN pybatch.settings.future_tolerance IS
    'Heartbeats and disconnects dated further than this ahead of the server clock are dropped (flush) or rejected (disconnect).';
COMMENT ON COLUMN pybatch.settings.history_retention IS
    'Rows of pybatch.flush_log older than this are purged by flush().';
COMMENT ON COLUMN pybatch.settings.max_rows_per_flush IS
    'Most staged rows one flush() drains (bounds a catch-up flush); NULL means no cap.';
COMMENT ON COLUMN pybatch.settings.created_workspace_agents IS
    'True when pybatch created public.workspace_agents, so rollback and uninstall may drop it.';

-- ---------------------------------------------------------------------------
-- The target table. A real deployment already has it (Coder's, with many more
-- columns); create it only when absent and remember that we did.
-- ---------------------------------------------------------------------------
DO $$
BEGIN
    IF pg_catalog.to_regclass('public.workspace_agents') IS NULL THEN
        -- fillfactor 70 leaves room on each page so flush updates stay HOT.
        CREATE TABLE public.workspace_agents (
            id uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
            created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
            updated_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
            first_connected_at timestamptz,
            last_connected_at timestamptz,
            disconnected_at timestamptz,
            last_connected_replica_id uuid,
            connection_timeout_seconds integer NOT NULL DEFAULT 0
        ) WITH (fillfactor = 70);
        COMMENT ON TABLE public.workspace_agents IS
            'Agent connection state (Coder''s connection columns), created by pybatch because none existed.';
        UPDATE pybatch.settings SET created_workspace_agents = true;
    END IF;
END
$$;

-- Raise, naming the column, when public.workspace_agents cannot serve as target.
CREATE FUNCTION pybatch.check_target() RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    needed CONSTANT text[][] := ARRAY[
        ['id', 'uuid'],
        ['created_at', 'timestamp with time zone'],
        ['updated_at', 'timestamp with time zone'],
        ['first_connected_at', 'timestamp with time zone'],
        ['last_connected_at', 'timestamp with time zone'],
        ['disconnected_at', 'timestamp with time zone'],
        ['last_connected_replica_id', 'uuid'],
        ['connection_timeout_seconds', 'integer']];
    found_type text;
BEGIN
    IF pg_catalog.to_regclass('public.workspace_agents') IS NULL THEN
        RAISE EXCEPTION 'table public.workspace_agents does not exist'
            USING ERRCODE = 'undefined_table';
    END IF;
    FOR i IN 1 .. pg_catalog.array_length(needed, 1) LOOP
        SELECT pg_catalog.format_type(a.atttypid, a.atttypmod) INTO found_type
        FROM pg_catalog.pg_attribute a
        WHERE a.attrelid = 'public.workspace_agents'::pg_catalog.regclass
          AND a.attname = needed[i][1] AND a.attnum > 0 AND NOT a.attisdropped;
        IF found_type IS NULL THEN
            RAISE EXCEPTION 'public.workspace_agents is missing column "%" (%)', needed[i][1], needed[i][2]
                USING ERRCODE = 'undefined_column';
        ELSIF found_type <> needed[i][2] THEN
            RAISE EXCEPTION 'public.workspace_agents column "%" has type %, expected %',
                needed[i][1], found_type, needed[i][2]
                USING ERRCODE = 'datatype_mismatch';
        END IF;
    END LOOP;
END
$$;
COMMENT ON FUNCTION pybatch.check_target() IS
    'Raises, naming the column, when public.workspace_agents lacks a column pybatch needs.';
DO $$ BEGIN PERFORM pybatch.check_target(); END $$;

-- ---------------------------------------------------------------------------
-- Staging. UNLOGGED: no WAL per heartbeat; emptied by a crash, which costs at
-- most one flush interval of heartbeats (the next beat restores them).
-- No index, no trigger, no foreign key: the insert path stays as cheap as it can be.
-- flush() drains it with DELETE ... RETURNING, which leaves dead tuples, so
-- autovacuum is told to visit it often.
-- ---------------------------------------------------------------------------
CREATE UNLOGGED TABLE pybatch.heartbeats (
    agent_id uuid NOT NULL,
    replica_id uuid,
    beat_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    -- 'infinity' would freeze an agent and '-infinity' would stick in first_connected_at.
    CONSTRAINT heartbeats_beat_at_finite CHECK (pg_catalog.isfinite(beat_at))
) WITH (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_cost_delay = 0
);
COMMENT ON TABLE pybatch.heartbeats IS
    'Staged heartbeats (UNLOGGED). Writers INSERT or COPY (agent_id, replica_id, beat_at); pybatch.flush() merges and removes them.';
COMMENT ON COLUMN pybatch.heartbeats.agent_id IS 'public.workspace_agents.id of the agent that is alive.';
COMMENT ON COLUMN pybatch.heartbeats.replica_id IS 'The app replica that saw the agent; NULL is kept as NULL.';
COMMENT ON COLUMN pybatch.heartbeats.beat_at IS 'When the agent was seen alive; defaults to the server clock.';

-- ---------------------------------------------------------------------------
-- Flush history. The table is flush_log; views built on it come later.
-- ---------------------------------------------------------------------------
CREATE TABLE pybatch.flush_log (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at timestamptz NOT NULL,
    duration interval NOT NULL,
    rows_staged bigint NOT NULL DEFAULT 0,
    agents_updated bigint NOT NULL DEFAULT 0,
    stale_heartbeats bigint NOT NULL DEFAULT 0,
    unknown_heartbeats bigint NOT NULL DEFAULT 0,
    future_heartbeats bigint NOT NULL DEFAULT 0,
    error text
);
CREATE INDEX flush_log_started_at_idx ON pybatch.flush_log (started_at);
COMMENT ON TABLE pybatch.flush_log IS
    'One row per flush() that ran (skipped calls are not logged). error is set when the flush failed and was rolled back.';
COMMENT ON INDEX pybatch.flush_log_started_at_idx IS 'Serves the retention purge.';

CREATE TYPE pybatch.flush_result AS (
    flush_id bigint,
    started_at timestamptz,
    skipped boolean,
    rows_staged bigint,
    agents_updated bigint,
    stale_heartbeats bigint,
    unknown_heartbeats bigint,
    future_heartbeats bigint,
    duration interval,
    error text
);
COMMENT ON TYPE pybatch.flush_result IS
    'What one pybatch.flush() call did. skipped: another flush held the lock. error: the flush failed, rolled back and kept staging.';

-- ---------------------------------------------------------------------------
-- flush(): merge staged heartbeats into public.workspace_agents.
--
-- The rule: each agent ends up as if every heartbeat and disconnect had been
-- applied one at a time in timestamp order. Each batch reduces to, per agent,
-- its earliest beat (first_at) and its latest beat (last_at, replica_id; ties go
-- to the greater replica, NULL lowest), and those fold into the row with
-- LEAST/GREATEST. That fold is order-independent, so flush order, arrival
-- order and partial drains change nothing.
-- ---------------------------------------------------------------------------
CREATE FUNCTION pybatch.flush(max_rows bigint DEFAULT NULL, lock_wait interval DEFAULT '0 seconds')
RETURNS pybatch.flush_result
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET work_mem = '64MB'  -- the per-agent sort of a large batch stays in memory
AS $$
DECLARE
    result pybatch.flush_result;
    cfg pybatch.settings;
    deadline timestamptz;
    newest_allowed timestamptz;
    error_state text;
    error_message text;
BEGIN
    IF max_rows < 0 THEN
        RAISE EXCEPTION 'pybatch.flush: max_rows must be 0 or more, not %', max_rows
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    result.started_at := pg_catalog.clock_timestamp();
    result.skipped := false;
    deadline := result.started_at + COALESCE(lock_wait, interval '0');

    -- One flush per database at a time (pg_cron, schedulers, manual calls).
    -- A second caller waits up to lock_wait, then reports skipped: it never
    -- double-applies, never deadlocks and never pretends it flushed zero rows.
    WHILE NOT pg_catalog.pg_try_advisory_xact_lock(7089336938131513954) LOOP
        IF pg_catalog.clock_timestamp() >= deadline THEN
            result.skipped := true;
            result.duration := pg_catalog.clock_timestamp() - result.started_at;
            RETURN result;
        END IF;
        PERFORM pg_catalog.pg_sleep(0.01);
    END LOOP;

    SELECT * INTO STRICT cfg FROM pybatch.settings;
    -- The wall clock, not now(): now() is the transaction's start, and in
    -- pybatch.flush_loop each pass's transaction begins before the sleep that
    -- precedes the flush, so fresh heartbeats would look future-dated and be dropped.
    newest_allowed := result.started_at + cfg.future_tolerance;

    -- The inner block is a subtransaction: on any error the drain and the merge
    -- roll back together, staging keeps its rows, and the error is logged below.
    BEGIN
        WITH drained AS (
            -- DELETE ... RETURNING, not TRUNCATE: a row committed after this
            -- statement's snapshot is not deleted and waits for the next flush
            -- (TRUNCATE would wipe it), and writers never wait for the merge.
            -- LIMIT caps one pass (LIMIT NULL: no cap); the ctid array makes it
            -- a TID scan of exactly the rows picked.
            DELETE FROM pybatch.heartbeats h
            WHERE h.ctid = ANY (ARRAY(SELECT s.ctid FROM pybatch.heartbeats s
                                      LIMIT COALESCE(max_rows, cfg.max_rows_per_flush)))
            RETURNING h.agent_id, h.replica_id, h.beat_at
        ),
        latest AS (
            -- One row per agent: its latest beat, plus its earliest beat and count.
            -- One sort serves both the window and DISTINCT ON.
            SELECT DISTINCT ON (d.agent_id)
                d.agent_id,
                d.replica_id,
                d.beat_at AS last_at,
                pg_catalog.min(d.beat_at) OVER per_agent AS first_at,
                pg_catalog.count(*) OVER per_agent AS beats
            FROM drained d
            WHERE d.beat_at <= newest_allowed     -- future-dated beats would freeze the agent
            WINDOW per_agent AS (
                PARTITION BY d.agent_id
                ORDER BY d.beat_at DESC, d.replica_id DESC NULLS LAST
                ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
            ORDER BY d.agent_id, d.beat_at DESC, d.replica_id DESC NULLS LAST
        ),
        merged AS (
            -- SET reads wa.* from the row version it updates (re-read after a
            -- concurrent disconnect commits), so no disconnect is ever undone.
            UPDATE public.workspace_agents wa SET
                first_connected_at = LEAST(wa.first_connected_at, l.first_at),
                last_connected_at = GREATEST(wa.last_connected_at, l.last_at),
                last_connected_replica_id = CASE
                    WHEN wa.last_connected_at IS NULL OR l.last_at > wa.last_connected_at
                        THEN l.replica_id
                    WHEN l.last_at = wa.last_connected_at
                        THEN GREATEST(wa.last_connected_replica_id, l.replica_id)
                    ELSE wa.last_connected_replica_id
                END,
                -- A disconnect at or after the newest beat stands (ties: the
                -- disconnect comes last); an older one is cleared by the beat.
                disconnected_at = CASE
                    WHEN wa.last_connected_at > l.last_at THEN wa.disconnected_at
                    WHEN wa.disconnected_at >= l.last_at THEN wa.disconnected_at
                END,
                updated_at = result.started_at
            FROM latest l
            WHERE wa.id = l.agent_id
              -- Only rows whose values change are rewritten (no dead tuple, no WAL otherwise).
              AND (wa.first_connected_at IS NULL OR l.first_at < wa.first_connected_at
                   OR wa.last_connected_at IS NULL OR l.last_at > wa.last_connected_at
                   OR (l.last_at = wa.last_connected_at
                       AND (l.replica_id > wa.last_connected_replica_id
                            OR (wa.last_connected_replica_id IS NULL AND l.replica_id IS NOT NULL)
                            OR wa.disconnected_at < l.last_at)))
            RETURNING wa.id, l.beats
        ),
        unmerged AS (
            -- Agents whose row did not change: stale beats, or unknown agents.
            -- Usually few, so only they are looked up again.
            SELECT l.agent_id, l.beats FROM latest l
            WHERE NOT EXISTS (SELECT FROM merged m WHERE m.id = l.agent_id)
        )
        SELECT
            (SELECT pg_catalog.count(*) FROM drained),
            (SELECT pg_catalog.count(*) FROM drained d WHERE d.beat_at > newest_allowed),
            (SELECT pg_catalog.count(*) FROM merged),
            (SELECT COALESCE(pg_catalog.sum(u.beats), 0) FROM unmerged u
              WHERE NOT EXISTS (SELECT FROM public.workspace_agents wa WHERE wa.id = u.agent_id)),
            (SELECT COALESCE(pg_catalog.sum(u.beats), 0) FROM unmerged u
              WHERE EXISTS (SELECT FROM public.workspace_agents wa WHERE wa.id = u.agent_id))
        INTO result.rows_staged, result.future_heartbeats, result.agents_updated,
             result.unknown_heartbeats, result.stale_heartbeats;
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        GET STACKED DIAGNOSTICS error_state = RETURNED_SQLSTATE, error_message = MESSAGE_TEXT;
        result.error := error_state || ': ' || error_message;
        result.rows_staged := 0;
        result.agents_updated := 0;
        result.stale_heartbeats := 0;
        result.unknown_heartbeats := 0;
        result.future_heartbeats := 0;
    END;

    result.duration := pg_catalog.clock_timestamp() - result.started_at;
    INSERT INTO pybatch.flush_log (started_at, duration, rows_staged, agents_updated,
                                   stale_heartbeats, unknown_heartbeats, future_heartbeats, error)
    VALUES (result.started_at, result.duration, result.rows_staged, result.agents_updated,
            result.stale_heartbeats, result.unknown_heartbeats, result.future_heartbeats, result.error)
    RETURNING id INTO result.flush_id;
    DELETE FROM pybatch.flush_log WHERE started_at < result.started_at - cfg.history_retention;
    RETURN result;
END
$$;
COMMENT ON FUNCTION pybatch.flush(bigint, interval) IS
    'Merges staged heartbeats into public.workspace_agents and removes them from staging. Returns one pybatch.flush_result row and logs it in pybatch.flush_log. A failed flush rolls back, keeps staging and returns the error.';

-- ---------------------------------------------------------------------------
-- disconnect(): the direct write. Bypasses staging so users see it at once.
-- ---------------------------------------------------------------------------
CREATE FUNCTION pybatch.disconnect(agent_id uuid, at timestamptz DEFAULT pg_catalog.now())
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    tolerance interval;
BEGIN
    IF disconnect.agent_id IS NULL THEN
        RAISE EXCEPTION 'pybatch.disconnect: agent_id must not be NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF disconnect.at IS NULL THEN
        RAISE EXCEPTION 'pybatch.disconnect: at must not be NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF NOT pg_catalog.isfinite(disconnect.at) THEN
        RAISE EXCEPTION 'pybatch.disconnect: at must be a finite time, not %', disconnect.at
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT s.future_tolerance INTO STRICT tolerance FROM pybatch.settings s;
    IF disconnect.at > pg_catalog.clock_timestamp() + tolerance THEN
        RAISE EXCEPTION 'pybatch.disconnect: time % is ahead of the server clock (%) by more than future_tolerance %',
            disconnect.at, pg_catalog.clock_timestamp(), tolerance
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- A disconnect older than the newest merged heartbeat changes nothing; a
    -- newer one than the recorded disconnect replaces it.
    UPDATE public.workspace_agents wa
    SET disconnected_at = disconnect.at,
        updated_at = pg_catalog.clock_timestamp()
    WHERE wa.id = disconnect.agent_id
      AND (wa.last_connected_at IS NULL OR disconnect.at >= wa.last_connected_at)
      AND (wa.disconnected_at IS NULL OR disconnect.at > wa.disconnected_at);
    IF FOUND THEN
        RETURN true;
    END IF;
    IF NOT EXISTS (SELECT FROM public.workspace_agents wa WHERE wa.id = disconnect.agent_id) THEN
        RAISE EXCEPTION 'pybatch.disconnect: no agent % in public.workspace_agents', disconnect.agent_id
            USING ERRCODE = 'no_data_found';
    END IF;
    RETURN false;
END
$$;
COMMENT ON FUNCTION pybatch.disconnect(uuid, timestamptz) IS
    'Marks an agent disconnected at once (bypasses staging). Returns true if the row changed, false if a newer heartbeat or disconnect already stands. Raises for a NULL argument, an unknown agent or a time beyond future_tolerance.';

-- Functions are executable by PUBLIC by default; pybatch grants them per role.
REVOKE EXECUTE ON FUNCTION pybatch.check_target() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pybatch.flush(bigint, interval) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pybatch.disconnect(uuid, timestamptz) FROM PUBLIC;

-- ===========================================================================
-- from migrations/0002_schedule.sql
-- ===========================================================================
-- pybatch 0002: pybatch.flush_loop(), the flush loop that pg_cron 1.4 runs once a minute.
-- pg_cron before 1.5 has no seconds schedules, so a per-minute job runs one
-- `CALL pybatch.flush_loop(...)` that flushes every N seconds, commits after each
-- pass and returns before the next minute's run. The loop also works on 1.5+.

-- ---------------------------------------------------------------------------
-- flush_loop_deadline: when a loop started now must stop starting passes.
-- Half a second before the next minute, so the last pass ends before pg_cron's
-- next run comes due (pg_cron never overlaps runs; it would queue the next one),
-- and the gap across the boundary stays within the interval + 0.5 s + pg_cron's
-- launch delay.
-- ---------------------------------------------------------------------------
CREATE FUNCTION pybatch.flush_loop_deadline(stop_at timestamptz DEFAULT NULL)
RETURNS timestamptz
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- The cron job's session gets a name `pybatch cron remove` can find and end.
    PERFORM pg_catalog.set_config('application_name', 'pybatch-flush-loop', false);
    RETURN COALESCE(stop_at,
        pg_catalog.date_trunc('minute', pg_catalog.clock_timestamp()) + interval '59.5 seconds');
END
$$;
COMMENT ON FUNCTION pybatch.flush_loop_deadline(timestamptz) IS
    'Internal to flush_loop(): names the session pybatch-flush-loop and returns the time after which no pass starts (stop_at, or 0.5 s before the next minute).';

-- ---------------------------------------------------------------------------
-- flush_loop_pass: one flush, guarded. Returns when the next pass is due, or
-- NULL when the loop should end. Any error is caught here, recorded, and the
-- loop goes on: one failed pass must never stop flushing for the rest of the
-- minute (that would outlast the 30 s inactive timeout).
-- ---------------------------------------------------------------------------
CREATE FUNCTION pybatch.flush_loop_pass(flush_interval interval, stop_at timestamptz)
RETURNS timestamptz
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    pass_started timestamptz := pg_catalog.clock_timestamp();
    result pybatch.flush_result;
    row_cap bigint;
    next_pass timestamptz;
    error_state text;
    error_message text;
BEGIN
    BEGIN
        -- flush() already returns its own failures as rows (staging kept); this
        -- block guards everything else (settings gone, flush_log unwritable, ...).
        result := pybatch.flush(NULL, interval '0');
        SELECT s.max_rows_per_flush INTO row_cap FROM pybatch.settings s;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS error_state = RETURNED_SQLSTATE, error_message = MESSAGE_TEXT;
        RAISE WARNING 'pybatch.flush_loop: pass failed, the loop goes on: %: %', error_state, error_message;
        BEGIN
            INSERT INTO pybatch.flush_log (started_at, duration, error)
            VALUES (pass_started, pg_catalog.clock_timestamp() - pass_started,
                    'flush_loop: ' || error_state || ': ' || error_message);
        EXCEPTION WHEN OTHERS THEN
            NULL;  -- the warning above is the record of last resort
        END;
    END;

    IF result.error IS NULL AND NOT COALESCE(result.skipped, true)
       AND row_cap IS NOT NULL AND result.rows_staged >= row_cap THEN
        next_pass := pg_catalog.clock_timestamp();  -- capped drain: more is waiting, go again now
    ELSE
        -- From this pass's start, so the flush's own time does not stretch the gap.
        next_pass := pass_started + flush_interval;
    END IF;
    IF next_pass > stop_at THEN
        RETURN NULL;
    END IF;
    RETURN next_pass;
END
$$;
COMMENT ON FUNCTION pybatch.flush_loop_pass(interval, timestamptz) IS
    'Internal to flush_loop(): runs one guarded flush (errors are caught, warned and logged in flush_log) and returns when the next pass is due, or NULL past stop_at.';

-- ---------------------------------------------------------------------------
-- flush_loop: the procedure pg_cron CALLs once a minute.
-- No SET clause and no SECURITY DEFINER: PostgreSQL forbids COMMIT in a
-- procedure that has either. The body therefore only calls schema-qualified
-- functions that pin their own search_path; flush() itself is SECURITY DEFINER.
-- COMMIT after each pass: each flush is its own transaction, and the sleep holds
-- no locks.
-- ---------------------------------------------------------------------------
CREATE PROCEDURE pybatch.flush_loop(flush_interval interval, stop_at timestamptz DEFAULT NULL)
LANGUAGE plpgsql
AS $$
DECLARE
    deadline timestamptz := pybatch.flush_loop_deadline(stop_at);
    next_pass timestamptz;
BEGIN
    LOOP
        next_pass := pybatch.flush_loop_pass(flush_interval, deadline);
        COMMIT;
        EXIT WHEN next_pass IS NULL;
        PERFORM pg_catalog.pg_sleep_until(next_pass);
    END LOOP;
END
$$;
COMMENT ON PROCEDURE pybatch.flush_loop(interval, timestamptz) IS
    'Flushes every flush_interval, one transaction per pass, until stop_at (default: 0.5 s before the next minute). pg_cron 1.4 runs it once a minute; a failed pass never ends the loop.';

REVOKE EXECUTE ON FUNCTION pybatch.flush_loop_deadline(timestamptz) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pybatch.flush_loop_pass(interval, timestamptz) FROM PUBLIC;
REVOKE EXECUTE ON PROCEDURE pybatch.flush_loop(interval, timestamptz) FROM PUBLIC;

-- ===========================================================================
-- from migrations/0003_inspect.sql
-- ===========================================================================
-- pybatch 0003: inspection views for psql and dashboards.
-- staging_summary, flush_history, agent_status and health, all readable by pg_monitor.
--
-- UNLOGGED staging cannot be read on a hot standby: even planning a query that
-- names it fails there ("cannot access temporary or unlogged relations during
-- recovery"). So no view names pybatch.heartbeats; they call plpgsql functions
-- that check pg_is_in_recovery() first (plpgsql plans a statement only when it
-- first runs it, so the branch not taken is never planned).

-- ---------------------------------------------------------------------------
-- Staging figures.
-- ---------------------------------------------------------------------------
CREATE FUNCTION pybatch.staging_stats()
RETURNS TABLE (
    available boolean,
    reason text,
    estimated boolean,
    method text,
    rows_staged bigint,
    distinct_agents bigint,
    oldest_beat_at timestamptz,
    newest_beat_at timestamptz,
    oldest_beat_age interval,
    newest_beat_age interval,
    size_bytes bigint
)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- Up to exact_max_pages (8 MB, ~120k-150k rows) every figure is exact: one
    -- scan with a distinct count, ~30 ms. Beyond that an exact scan alone takes
    -- 100-200 ms per million rows on a small server, so the figures come from
    -- a block sample of about sample_pages pages (~30k rows) instead.
    exact_max_pages CONSTANT bigint := 1024;
    sample_pages CONSTANT numeric := 256;
    heap_pages bigint;
    sample_percent numeric;
    sample_size bigint;
    sample_distinct bigint;
    sample_singletons bigint;
    live_counter bigint;
BEGIN
    IF pg_catalog.pg_is_in_recovery() THEN
        available := false;
        reason := 'hot standby: UNLOGGED staging (pybatch.heartbeats) exists only on the primary';
        RETURN NEXT;
        RETURN;
    END IF;
    available := true;
    size_bytes := pg_catalog.pg_total_relation_size('pybatch.heartbeats'::pg_catalog.regclass);
    heap_pages := pg_catalog.pg_relation_size('pybatch.heartbeats'::pg_catalog.regclass)
        / pg_catalog.current_setting('block_size')::bigint;

    IF heap_pages <= exact_max_pages THEN
        estimated := false;
        method := 'exact';
        SELECT pg_catalog.count(*), pg_catalog.count(DISTINCT h.agent_id),
               pg_catalog.min(h.beat_at), pg_catalog.max(h.beat_at)
        INTO rows_staged, distinct_agents, oldest_beat_at, newest_beat_at
        FROM pybatch.heartbeats h;
    ELSE
        estimated := true;
        sample_percent := LEAST(100, 100 * sample_pages / heap_pages);
        method := 'estimate from a ' || pg_catalog.round(sample_percent, 2)::text || ' % block sample';
        SELECT pg_catalog.sum(c.beats), pg_catalog.count(*), pg_catalog.count(*) FILTER (WHERE c.beats = 1),
               pg_catalog.min(c.first_at), pg_catalog.max(c.last_at)
        INTO sample_size, sample_distinct, sample_singletons, oldest_beat_at, newest_beat_at
        FROM (
            SELECT pg_catalog.count(*) AS beats, pg_catalog.min(h.beat_at) AS first_at,
                   pg_catalog.max(h.beat_at) AS last_at
            FROM pybatch.heartbeats h TABLESAMPLE SYSTEM (sample_percent)
            GROUP BY h.agent_id
        ) c;
        sample_size := COALESCE(sample_size, 0);
        -- Each block is in the sample with probability sample_percent: unbiased,
        -- but +-5-10 % from block to block. The statistics' live-tuple counter
        -- (kept per insert and delete, up to ~1 s behind) is closer; it is used
        -- unless a stats reset has made it disagree with the sample by a third.
        rows_staged := pg_catalog.round(sample_size * 100 / sample_percent)::bigint;
        live_counter := pg_catalog.pg_stat_get_live_tuples('pybatch.heartbeats'::pg_catalog.regclass);
        IF live_counter BETWEEN rows_staged * 2 / 3 AND rows_staged * 3 / 2 THEN
            rows_staged := live_counter;
            method := method || ', rows from the live-tuple counter';
        END IF;
        IF sample_size > 0 THEN
            -- Haas-Stokes "Duj1", the estimator ANALYZE uses for n_distinct:
            -- n*d / (n - f1 + f1*n/N), where f1 counts agents seen once in the sample.
            distinct_agents := LEAST(rows_staged, GREATEST(sample_distinct, pg_catalog.round(
                sample_size::numeric * sample_distinct
                / (sample_size - sample_singletons + sample_singletons::numeric * sample_size / rows_staged))::bigint));
        ELSE
            distinct_agents := 0;
        END IF;
    END IF;

    oldest_beat_age := pg_catalog.now() - oldest_beat_at;
    newest_beat_age := pg_catalog.now() - newest_beat_at;
    RETURN NEXT;
END
$$;
COMMENT ON FUNCTION pybatch.staging_stats() IS
    'Backs pybatch.staging_summary: one row of staging figures, or available = false with a reason on a hot standby.';

-- Newest staged beat per agent; no rows on a hot standby (callers check pg_is_in_recovery()).
CREATE FUNCTION pybatch.staged_latest_beats()
RETURNS TABLE (agent_id uuid, latest_beat_at timestamptz)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF pg_catalog.pg_is_in_recovery() THEN
        RETURN;
    END IF;
    RETURN QUERY
        SELECT h.agent_id, pg_catalog.max(h.beat_at)
        FROM pybatch.heartbeats h
        GROUP BY h.agent_id;
END
$$;
COMMENT ON FUNCTION pybatch.staged_latest_beats() IS
    'Backs pybatch.agent_status: the newest staged heartbeat of each agent with one in staging (none on a hot standby).';

REVOKE EXECUTE ON FUNCTION pybatch.staging_stats() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pybatch.staged_latest_beats() FROM PUBLIC;

-- ---------------------------------------------------------------------------
-- Views.
-- ---------------------------------------------------------------------------
CREATE VIEW pybatch.staging_summary AS
SELECT s.available, s.reason, s.estimated, s.method, s.rows_staged, s.distinct_agents,
       s.oldest_beat_at, s.newest_beat_at, s.oldest_beat_age, s.newest_beat_age, s.size_bytes
FROM pybatch.staging_stats() s;
COMMENT ON VIEW pybatch.staging_summary IS
    'One row: what waits in staging (pybatch.heartbeats). Exact while staging is small (up to 8 MB); beyond that rows_staged, distinct_agents and the oldest/newest beats are estimates (from a block sample; rows_staged from the statistics live-tuple counter when the sample agrees) and estimated is true. On a hot standby available is false, reason says why and the figures are NULL.';
COMMENT ON COLUMN pybatch.staging_summary.available IS 'False on a hot standby, where UNLOGGED staging cannot be read.';
COMMENT ON COLUMN pybatch.staging_summary.reason IS 'Why the figures are NULL; NULL when available.';
COMMENT ON COLUMN pybatch.staging_summary.estimated IS 'True when rows_staged, distinct_agents and the oldest/newest beats are sample estimates (staging over 8 MB).';
COMMENT ON COLUMN pybatch.staging_summary.method IS '"exact", or how the estimates were made (block sample size; whether rows_staged is the live-tuple counter).';
COMMENT ON COLUMN pybatch.staging_summary.rows_staged IS 'Heartbeats waiting for the next flush (an estimate when estimated).';
COMMENT ON COLUMN pybatch.staging_summary.distinct_agents IS 'Agents with a staged heartbeat (an estimate when estimated).';
COMMENT ON COLUMN pybatch.staging_summary.oldest_beat_at IS 'Oldest staged beat_at (when estimated: the oldest in the sample, never older than the true one).';
COMMENT ON COLUMN pybatch.staging_summary.newest_beat_at IS 'Newest staged beat_at (when estimated: the newest in the sample).';
COMMENT ON COLUMN pybatch.staging_summary.oldest_beat_age IS 'now() - oldest_beat_at: how long the oldest heartbeat has waited.';
COMMENT ON COLUMN pybatch.staging_summary.newest_beat_age IS 'now() - newest_beat_at: how long ago the newest heartbeat was staged.';
COMMENT ON COLUMN pybatch.staging_summary.size_bytes IS 'On-disk size of the staging table, dead tuples included (exact).';

CREATE VIEW pybatch.flush_history AS
SELECT l.id AS flush_id,
       l.started_at,
       l.started_at + l.duration AS finished_at,
       l.error IS NULL AS succeeded,
       l.rows_staged,
       l.agents_updated,
       l.stale_heartbeats,
       l.unknown_heartbeats,
       l.future_heartbeats,
       l.duration,
       l.error
FROM pybatch.flush_log l
ORDER BY l.started_at DESC, l.id DESC;
COMMENT ON VIEW pybatch.flush_history IS
    'Recent flushes (kept for settings.history_retention), newest first; add LIMIT for the last few. Failed flushes have succeeded = false and the error.';
COMMENT ON COLUMN pybatch.flush_history.flush_id IS 'pybatch.flush_log.id.';
COMMENT ON COLUMN pybatch.flush_history.started_at IS 'When the flush started.';
COMMENT ON COLUMN pybatch.flush_history.finished_at IS 'When the flush ended (started_at + duration).';
COMMENT ON COLUMN pybatch.flush_history.succeeded IS 'False when the flush failed, rolled back and kept staging.';
COMMENT ON COLUMN pybatch.flush_history.rows_staged IS 'Staged heartbeats the flush drained.';
COMMENT ON COLUMN pybatch.flush_history.agents_updated IS 'workspace_agents rows the flush changed.';
COMMENT ON COLUMN pybatch.flush_history.stale_heartbeats IS 'Heartbeats older than what workspace_agents already held (changed nothing).';
COMMENT ON COLUMN pybatch.flush_history.unknown_heartbeats IS 'Heartbeats for agent ids not in workspace_agents (dropped).';
COMMENT ON COLUMN pybatch.flush_history.future_heartbeats IS 'Heartbeats dated beyond settings.future_tolerance (dropped).';
COMMENT ON COLUMN pybatch.flush_history.duration IS 'How long the flush took.';
COMMENT ON COLUMN pybatch.flush_history.error IS 'SQLSTATE and message of a failed flush; NULL on success.';

-- Coder's status rules (FACTS.md), in order; a NULL time compares like Go's zero time.
CREATE VIEW pybatch.agent_status AS
SELECT wa.id AS agent_id,
       CASE
           WHEN wa.first_connected_at IS NULL THEN
               CASE WHEN wa.connection_timeout_seconds > 0
                         AND pg_catalog.now() - wa.created_at
                             > pg_catalog.make_interval(secs => wa.connection_timeout_seconds)
                    THEN 'timeout' ELSE 'connecting' END
           WHEN COALESCE(wa.disconnected_at, '-infinity') >= COALESCE(wa.last_connected_at, '-infinity')
               THEN 'disconnected'
           WHEN wa.last_connected_at IS NULL
                OR pg_catalog.now() - wa.last_connected_at > s.inactive_timeout
               THEN 'disconnected'
           ELSE 'connected'
       END AS status,
       wa.created_at,
       wa.first_connected_at,
       wa.last_connected_at,
       wa.disconnected_at,
       wa.connection_timeout_seconds,
       b.latest_beat_at AS staged_beat_at,
       CASE WHEN pg_catalog.pg_is_in_recovery() THEN NULL
            ELSE COALESCE(b.latest_beat_at > COALESCE(wa.last_connected_at, '-infinity'), false)
       END AS newer_heartbeat_staged
FROM public.workspace_agents wa
CROSS JOIN pybatch.settings s
LEFT JOIN pybatch.staged_latest_beats() b ON b.agent_id = wa.id;
COMMENT ON VIEW pybatch.agent_status IS
    'One row per agent of public.workspace_agents with Coder''s status (connecting, connected, disconnected, timeout) using settings.inactive_timeout, and whether a newer heartbeat still waits in staging (the answer to "why does this agent look stale?"). Reads all of staging once per query.';
COMMENT ON COLUMN pybatch.agent_status.agent_id IS 'public.workspace_agents.id.';
COMMENT ON COLUMN pybatch.agent_status.status IS 'connecting, connected, disconnected or timeout, by Coder''s rules.';
COMMENT ON COLUMN pybatch.agent_status.created_at IS 'workspace_agents.created_at.';
COMMENT ON COLUMN pybatch.agent_status.first_connected_at IS 'workspace_agents.first_connected_at.';
COMMENT ON COLUMN pybatch.agent_status.last_connected_at IS 'workspace_agents.last_connected_at (as of the last flush).';
COMMENT ON COLUMN pybatch.agent_status.disconnected_at IS 'workspace_agents.disconnected_at.';
COMMENT ON COLUMN pybatch.agent_status.connection_timeout_seconds IS 'workspace_agents.connection_timeout_seconds (0: no timeout).';
COMMENT ON COLUMN pybatch.agent_status.staged_beat_at IS 'Newest heartbeat of this agent still in staging; NULL if none (or on a hot standby).';
COMMENT ON COLUMN pybatch.agent_status.newer_heartbeat_staged IS 'True when staging holds a heartbeat newer than last_connected_at: the next flush will move it. NULL on a hot standby.';

CREATE VIEW pybatch.health AS
WITH cfg AS (
    SELECT s.flush_interval FROM pybatch.settings s
), last_success AS (
    SELECT l.started_at + l.duration AS finished_at
    FROM pybatch.flush_log l
    WHERE l.error IS NULL
    ORDER BY l.started_at DESC
    LIMIT 1
), last_failure AS (
    SELECT l.started_at + l.duration AS finished_at, l.error
    FROM pybatch.flush_log l
    WHERE l.error IS NOT NULL
    ORDER BY l.started_at DESC
    LIMIT 1
), judged AS (
    SELECT cfg.flush_interval,
           ok.finished_at AS last_success_at,
           pg_catalog.now() - ok.finished_at AS last_success_age,
           bad.finished_at AS last_failure_at,
           bad.error AS last_error
    FROM cfg
    LEFT JOIN last_success ok ON true
    LEFT JOIN last_failure bad ON true
)
SELECT j.last_success_at,
       j.last_success_age,
       j.flush_interval,
       CASE
           WHEN j.last_success_at IS NULL THEN 'stalled'
           WHEN j.last_success_age <= 2 * j.flush_interval THEN 'ok'
           WHEN j.last_success_age <= 5 * j.flush_interval THEN 'late'
           ELSE 'stalled'
       END AS status,
       CASE
           WHEN j.last_success_at IS NULL THEN
               'no successful flush recorded in pybatch.flush_log'
               || CASE WHEN j.last_error IS NOT NULL THEN '; last flush failed: ' || j.last_error
                       ELSE '; is a scheduler running (pg_cron job or `pybatch scheduler`)?' END
           WHEN j.last_success_age <= 2 * j.flush_interval THEN
               'last successful flush ' || pg_catalog.round(EXTRACT(EPOCH FROM j.last_success_age), 1)::text || ' s'
               || ' ago, within 2 flush intervals'
           ELSE
               'last successful flush ' || pg_catalog.round(EXTRACT(EPOCH FROM j.last_success_age), 1)::text || ' s'
               || ' ago, over ' || CASE WHEN j.last_success_age <= 5 * j.flush_interval THEN '2' ELSE '5' END
               || ' flush intervals of ' || j.flush_interval::text
               || CASE WHEN j.last_failure_at > j.last_success_at THEN '; last flush failed: ' || j.last_error
                       ELSE '; is a scheduler running (pg_cron job or `pybatch scheduler`)?' END
       END AS reason,
       j.last_failure_at,
       j.last_error
FROM judged j;
COMMENT ON VIEW pybatch.health IS
    'One row: is flushing keeping up? status ok (last success within 2 flush intervals), late (within 5) or stalled (older, or never), with a reason. Usable as a liveness check, also on a hot standby.';
COMMENT ON COLUMN pybatch.health.last_success_at IS 'When the last successful flush ended; NULL if none is recorded.';
COMMENT ON COLUMN pybatch.health.last_success_age IS 'now() - last_success_at.';
COMMENT ON COLUMN pybatch.health.flush_interval IS 'settings.flush_interval, the yardstick for late and stalled.';
COMMENT ON COLUMN pybatch.health.status IS 'ok, late or stalled.';
COMMENT ON COLUMN pybatch.health.reason IS 'Why the status is what it is, for people.';
COMMENT ON COLUMN pybatch.health.last_failure_at IS 'When the last failed flush ended; NULL if none is recorded.';
COMMENT ON COLUMN pybatch.health.last_error IS 'Error of the last failed flush.';

-- ---------------------------------------------------------------------------
-- Monitoring access: pg_monitor reads the views (they run with the owner's
-- rights on tables; the staging functions are SECURITY DEFINER).
-- ---------------------------------------------------------------------------
GRANT USAGE ON SCHEMA pybatch TO pg_monitor;
GRANT SELECT ON pybatch.staging_summary, pybatch.flush_history, pybatch.agent_status, pybatch.health TO pg_monitor;
GRANT SELECT ON pybatch.settings TO pg_monitor;  -- the yardsticks the views use
GRANT EXECUTE ON FUNCTION pybatch.staging_stats(), pybatch.staged_latest_beats() TO pg_monitor;

-- ===========================================================================
-- from migrations/0004_flush_passes.sql
-- ===========================================================================
-- pybatch 0004: the flush in committed passes, on the table as found.
--
-- Why passes. An update is HOT only if its row's page has room for the new
-- version, and a transaction's old versions can be pruned only after it commits.
-- One statement that updates k rows of a page needs room for k new versions at
-- once, which a fillfactor-100 table (Coder's) never has: the merge went non-HOT,
-- wrote every index and grew the heap. So the merge now runs in passes that each
-- update at most one row per heap page and commit; the next pass finds the page
-- pruned and stays HOT.
--
-- The shape (docs/design.md has the whole argument):
--   flush_begin()  hand-off: drain staging into pybatch.pending, one row per agent,
--                  numbered by its row's place on its heap page (pass_no);
--   flush_pass()   merge the pending rows of the lowest pass_no, skipping rows
--                  another transaction has locked; isolate a failing agent;
--   flush_finish() log the flush in flush_log and purge old history.
-- CALL pybatch.flush_in_passes() commits after each step (the default path:
-- pg_cron, `pybatch scheduler`, `pybatch flush`); SELECT pybatch.flush() runs the
-- same steps in the caller's one transaction (correct, but not HOT-friendly).
--
-- Also here: mutual exclusion by a row lock of a pybatch table (an advisory key
-- could be taken by any role), the future check judged at drain time, updated_at
-- from the events themselves, settings range checks, and functions owned by the
-- owner of public.workspace_agents so its triggers never run with more rights.

-- ---------------------------------------------------------------------------
-- Settings: ranges a flush can live with (a huge retention overflowed the purge).
-- Existing values outside them are clamped first; the old default interval is
-- shortened (Coder's batcher flushes every 5 s; 10 s left agents at 25.7 s of a
-- 30 s budget).
-- ---------------------------------------------------------------------------
UPDATE pybatch.settings SET
    flush_interval = LEAST(GREATEST(flush_interval, interval '100 milliseconds'), interval '1 hour'),
    inactive_timeout = LEAST(GREATEST(inactive_timeout, interval '1 second'), interval '1 day'),
    future_tolerance = LEAST(future_tolerance, interval '1 hour'),
    history_retention = LEAST(GREATEST(history_retention, interval '1 minute'), interval '3650 days'),
    max_rows_per_flush = LEAST(max_rows_per_flush, 1000000000);
UPDATE pybatch.settings SET flush_interval = interval '5 seconds' WHERE flush_interval = interval '10 seconds';
ALTER TABLE pybatch.settings
    ALTER COLUMN flush_interval SET DEFAULT interval '5 seconds',
    DROP CONSTRAINT settings_flush_interval_check,
    DROP CONSTRAINT settings_inactive_timeout_check,
    DROP CONSTRAINT settings_future_tolerance_check,
    DROP CONSTRAINT settings_history_retention_check,
    DROP CONSTRAINT settings_max_rows_per_flush_check,
    ADD CONSTRAINT settings_flush_interval_range
        CHECK (flush_interval BETWEEN interval '100 milliseconds' AND interval '1 hour'),
    ADD CONSTRAINT settings_inactive_timeout_range
        CHECK (inactive_timeout BETWEEN interval '1 second' AND interval '1 day'),
    ADD CONSTRAINT settings_future_tolerance_range
        CHECK (future_tolerance BETWEEN interval '0' AND interval '1 hour'),
    ADD CONSTRAINT settings_history_retention_range
        CHECK (history_retention BETWEEN interval '1 minute' AND interval '3650 days'),
    ADD CONSTRAINT settings_max_rows_per_flush_range
        CHECK (max_rows_per_flush BETWEEN 1 AND 1000000000);
COMMENT ON COLUMN pybatch.settings.flush_interval IS
    'How often the scheduler (pg_cron or `pybatch scheduler`) flushes; health checks use it to judge lateness. 100 ms to 1 h; keep heartbeat period + flush interval + flush time under inactive_timeout.';

-- ---------------------------------------------------------------------------
-- The flush lock: one row. A flush step holds it FOR UPDATE for its transaction.
-- Only roles with UPDATE on this table can lock it (pybatch's functions), so no
-- other role can stall flushing the way a public advisory key could.
-- ---------------------------------------------------------------------------
CREATE TABLE pybatch.flush_lock (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton)
);
INSERT INTO pybatch.flush_lock DEFAULT VALUES;
COMMENT ON TABLE pybatch.flush_lock IS
    'One row that each flush step locks FOR UPDATE: one step at a time per database. pybatch.flush_lock_holders shows who holds it.';

-- ---------------------------------------------------------------------------
-- Pending: what a hand-off drained and the passes have not merged yet, one row
-- per agent (the same reduction as before: earliest beat, latest beat with its
-- replica, count). UNLOGGED like staging: a crash empties it, which costs at
-- most the one interval it holds; the next heartbeat restores each agent.
-- ---------------------------------------------------------------------------
CREATE UNLOGGED TABLE pybatch.pending (
    -- One row per agent by construction (each hand-off folds in what is left),
    -- under pybatch.flush_lock; no unique index, whose random inserts would
    -- cost more than the rest of the hand-off.
    agent_id uuid NOT NULL,
    first_at timestamptz NOT NULL,
    last_at timestamptz NOT NULL,
    replica_id uuid,
    beats bigint NOT NULL,
    -- Rank of the agent's row on its heap page: pass k updates the k-th row of
    -- every page, so one pass touches each page at most once. NULL: wait for the
    -- next flush (its row was locked by another transaction).
    pass_no integer
);
-- Rows are inserted in pass order, so this index only ever grows at its right edge.
CREATE INDEX pending_pass_no_idx ON pybatch.pending (pass_no);
COMMENT ON TABLE pybatch.pending IS
    'Heartbeats drained from staging and not merged yet, reduced to one row per agent (UNLOGGED). Normally empty between flushes; rows whose agent row was locked wait here for the next flush.';
COMMENT ON COLUMN pybatch.pending.pass_no IS
    'Which pass merges this agent: its row''s rank on its heap page. NULL: deferred to the next flush.';

-- ---------------------------------------------------------------------------
-- Quarantine: agents whose merge failed alone (a trigger that raises for one
-- agent, say) while others merged. Their beats are kept here with the error,
-- retried with back-off, and never block the rest of the fleet again.
-- ---------------------------------------------------------------------------
CREATE TABLE pybatch.quarantine (
    agent_id uuid PRIMARY KEY,
    first_at timestamptz NOT NULL,
    last_at timestamptz NOT NULL,
    replica_id uuid,
    beats bigint NOT NULL,
    error text NOT NULL,
    attempts integer NOT NULL DEFAULT 1,
    quarantined_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    retry_at timestamptz NOT NULL
);
COMMENT ON TABLE pybatch.quarantine IS
    'Agents whose merge failed on its own (the rest merged). Their beats are kept with the error and retried after retry_at (back-off doubles, at most 1 h). Retry now: SELECT pybatch.requeue_quarantined().';

-- ---------------------------------------------------------------------------
-- What each flush did, beyond 0001's columns.
-- ---------------------------------------------------------------------------
ALTER TABLE pybatch.flush_log
    ADD COLUMN passes integer NOT NULL DEFAULT 0,
    ADD COLUMN hot_updates bigint NOT NULL DEFAULT 0,
    ADD COLUMN deferred_agents bigint NOT NULL DEFAULT 0,
    ADD COLUMN quarantined_agents bigint NOT NULL DEFAULT 0,
    ADD COLUMN newest_event_at timestamptz,
    ADD COLUMN heap_bytes bigint,
    ADD COLUMN index_bytes bigint;
COMMENT ON COLUMN pybatch.flush_log.passes IS 'Committed passes the merge took (at most one row per heap page each).';
COMMENT ON COLUMN pybatch.flush_log.hot_updates IS 'Of agents_updated, how many were HOT (no index entry, page-local).';
COMMENT ON COLUMN pybatch.flush_log.deferred_agents IS 'Agents whose row another transaction held locked: left pending for the next flush.';
COMMENT ON COLUMN pybatch.flush_log.quarantined_agents IS 'Agents whose merge failed alone and went to pybatch.quarantine.';
COMMENT ON COLUMN pybatch.flush_log.newest_event_at IS 'Newest beat_at the flush applied.';
COMMENT ON COLUMN pybatch.flush_log.heap_bytes IS 'Size of public.workspace_agents (heap) after the flush: growth means non-HOT updates.';
COMMENT ON COLUMN pybatch.flush_log.index_bytes IS 'Size of its indexes after the flush.';

ALTER TYPE pybatch.flush_result
    ADD ATTRIBUTE passes integer,
    ADD ATTRIBUTE hot_updates bigint,
    ADD ATTRIBUTE deferred_agents bigint,
    ADD ATTRIBUTE quarantined_agents bigint,
    ADD ATTRIBUTE newest_event_at timestamptz;
COMMENT ON TYPE pybatch.flush_result IS
    'What one flush did. skipped: another flush held pybatch.flush_lock past lock_wait. error: what failed; nothing it had not merged was lost (staging or pybatch.pending keep it).';

-- ---------------------------------------------------------------------------
-- The lock. lock_wait NULL: wait as long as the session's lock_timeout allows.
-- ---------------------------------------------------------------------------
CREATE FUNCTION pybatch.flush_take_lock(lock_wait interval)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    previous_timeout text := pg_catalog.current_setting('lock_timeout');
BEGIN
    IF lock_wait IS NOT NULL THEN
        -- 0 would mean "forever" to lock_timeout; 1 ms is the shortest real wait.
        PERFORM pg_catalog.set_config('lock_timeout',
            GREATEST(1, pg_catalog.ceil(EXTRACT(EPOCH FROM lock_wait) * 1000))::bigint::text, true);
    END IF;
    BEGIN
        PERFORM FROM pybatch.flush_lock FOR UPDATE;
    EXCEPTION WHEN lock_not_available THEN
        PERFORM pg_catalog.set_config('lock_timeout', previous_timeout, true);
        RETURN false;
    END;
    PERFORM pg_catalog.set_config('lock_timeout', previous_timeout, true);
    RETURN true;
END
$$;
COMMENT ON FUNCTION pybatch.flush_take_lock(interval) IS
    'Internal: locks the pybatch.flush_lock row for this transaction, waiting at most lock_wait (NULL: lock_timeout). False when it could not.';

-- Who holds (or waits for) the flush lock, for `pybatch health` and psql.
CREATE VIEW pybatch.flush_lock_holders AS
SELECT l.pid,
       a.wait_event_type IS DISTINCT FROM 'Lock' AS holding,  -- false: waiting for the holder
       a.usename AS role, a.application_name, a.client_addr,
       a.xact_start, a.state, pg_catalog.now() - a.xact_start AS for_how_long
FROM pg_catalog.pg_locks l
LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'relation'
  AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database())
  AND l.relation = 'pybatch.flush_lock'::pg_catalog.regclass
  AND l.pid <> pg_catalog.pg_backend_pid();
COMMENT ON VIEW pybatch.flush_lock_holders IS
    'Sessions holding (granted) or waiting for pybatch.flush_lock: who runs a flush step right now.';

-- ---------------------------------------------------------------------------
-- The hand-off: drain staging into pending, on any set of relations (the
-- tables here; one shard group of each on Citus, migration 0006).
-- ---------------------------------------------------------------------------
CREATE FUNCTION pybatch.drain_into(staging regclass, pending regclass, agents regclass, quarantine regclass,
                                   row_cap bigint, tolerance interval,
                                   OUT rows_staged bigint, OUT future_heartbeats bigint,
                                   OUT unknown_heartbeats bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET work_mem = '64MB'
AS $fn$
DECLARE
    handoff_at timestamptz := pg_catalog.clock_timestamp();
    previous_nestloop text := pg_catalog.current_setting('enable_nestloop');
BEGIN
    -- The planner cannot know how many rows a drain returns (it guesses ten)
    -- and would look each agent up by index; past a few pages of staging one
    -- hash join with the table is many times cheaper.
    IF pg_catalog.pg_relation_size(staging) > 8 * pg_catalog.current_setting('block_size')::bigint THEN
        PERFORM pg_catalog.set_config('enable_nestloop', 'off', true);
    END IF;
    EXECUTE pg_catalog.format($q$
        WITH drained AS (
            -- DELETE ... RETURNING, not TRUNCATE: a row committed after this
            -- statement's snapshot is not deleted and waits for the next flush.
            -- "Future" is judged per row by the clock read here, after the
            -- snapshot: a beat stamped with the server clock committed before the
            -- snapshot, so it is never future, however long the lock took.
            DELETE FROM %1$s h
            WHERE h.ctid = ANY (ARRAY(SELECT s.ctid FROM %1$s s LIMIT $1))
            RETURNING h.agent_id, h.replica_id, h.beat_at,
                      h.beat_at > pg_catalog.clock_timestamp() + $2 AS is_future
        ),
        carried AS (
            -- What is still pending (deferred by an earlier flush because its row
            -- was locked, or left by one that failed) is handed off again with
            -- the new beats, so every agent has one pending row and one pass.
            DELETE FROM %2$s p
            RETURNING p.agent_id, p.replica_id, p.first_at, p.last_at, p.beats
        ),
        retried AS (
            -- Quarantined agents whose back-off has passed get another try.
            DELETE FROM %4$s q WHERE q.retry_at <= $3
            RETURNING q.agent_id, q.replica_id, q.first_at, q.last_at, q.beats
        ),
        events AS (
            SELECT d.agent_id, d.replica_id, d.beat_at AS first_at, d.beat_at AS last_at, 1::bigint AS beats
            FROM drained d
            WHERE NOT d.is_future     -- future-dated beats would freeze the agent
            UNION ALL
            SELECT c.agent_id, c.replica_id, c.first_at, c.last_at, c.beats FROM carried c
            UNION ALL
            SELECT r.agent_id, r.replica_id, r.first_at, r.last_at, r.beats FROM retried r
        ),
        latest AS (
            -- One row per agent: its latest beat (ties: greater replica, NULL
            -- lowest), its earliest beat and its count. One sort serves both.
            SELECT DISTINCT ON (e.agent_id)
                e.agent_id,
                e.replica_id,
                e.last_at,
                pg_catalog.min(e.first_at) OVER per_agent AS first_at,
                pg_catalog.sum(e.beats) OVER per_agent AS beats
            FROM events e
            WINDOW per_agent AS (
                PARTITION BY e.agent_id
                ORDER BY e.last_at DESC, e.replica_id DESC NULLS LAST
                ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
            ORDER BY e.agent_id, e.last_at DESC, e.replica_id DESC NULLS LAST
        ),
        placed AS (
            -- Number each agent within its row's heap page: pass k takes the k-th.
            SELECT l.agent_id, l.first_at, l.last_at, l.replica_id, l.beats,
                   pg_catalog.row_number() OVER (
                       PARTITION BY (wa.ctid::text::point)[0] ORDER BY wa.ctid)::integer AS pass_no,
                   EXISTS (SELECT FROM %4$s q
                           WHERE q.agent_id = l.agent_id AND q.retry_at > $3) AS held
            FROM latest l
            JOIN %3$s wa ON wa.id = l.agent_id
        ),
        queued AS (
            -- In pass order, so each pass reads and deletes neighbouring rows.
            INSERT INTO %2$s (agent_id, first_at, last_at, replica_id, beats, pass_no)
            SELECT pl.agent_id, pl.first_at, pl.last_at, pl.replica_id, pl.beats, pl.pass_no
            FROM placed pl WHERE NOT pl.held
            ORDER BY pl.pass_no
        ),
        held AS (
            -- A quarantined agent's new beats join its quarantined ones.
            UPDATE %4$s q SET
                first_at = LEAST(q.first_at, pl.first_at),
                last_at = GREATEST(q.last_at, pl.last_at),
                replica_id = CASE
                    WHEN pl.last_at > q.last_at THEN pl.replica_id
                    WHEN pl.last_at = q.last_at THEN GREATEST(q.replica_id, pl.replica_id)
                    ELSE q.replica_id
                END,
                beats = q.beats + pl.beats
            FROM placed pl
            WHERE pl.held AND q.agent_id = pl.agent_id
        )
        -- (queued and held run to completion although nothing reads them.)
        SELECT
            (SELECT pg_catalog.count(*) FROM drained),
            (SELECT pg_catalog.count(*) FROM drained d WHERE d.is_future),
            -- Agents with no row (never created, or deleted since): nothing to merge into.
            (SELECT COALESCE(pg_catalog.sum(l.beats), 0)::bigint FROM latest l
              WHERE NOT EXISTS (SELECT FROM placed pl WHERE pl.agent_id = l.agent_id))
        $q$, staging, pending, agents, quarantine)
    INTO rows_staged, future_heartbeats, unknown_heartbeats
    USING row_cap, tolerance, handoff_at;
    -- Only for the hand-off: the caller's transaction may go on (SELECT pybatch.flush()).
    PERFORM pg_catalog.set_config('enable_nestloop', previous_nestloop, true);
END
$fn$;
COMMENT ON FUNCTION pybatch.drain_into(regclass, regclass, regclass, regclass, bigint, interval) IS
    'Internal: the hand-off of a flush on the given relations (staging, pending, agents, quarantine; a shard group on Citus). Drains at most row_cap staged rows into pending, one row per agent numbered by heap page.';

-- ---------------------------------------------------------------------------
-- One pass's merge of one agent's reduced beats into its row, on any set of
-- relations. The fold (LEAST/GREATEST) does not depend on order, so passes,
-- deferrals and retries change nothing.
-- ---------------------------------------------------------------------------
CREATE FUNCTION pybatch.merge_pass_in(pending regclass, agents regclass, this_pass integer, only_agent uuid)
RETURNS TABLE (picked bigint, merged bigint, updated bigint, stale_beats bigint, newest_event_at timestamptz)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
-- A pass touches one row per page, so the planner would rather scan the whole
-- table than look rows up; the lookups are several times cheaper (they read
-- only the rows of this pass) and keep the cost of a pass to its own size.
SET enable_seqscan = off
-- Plans see the arrays' values: true row counts and hashed = ANY.
SET plan_cache_mode = force_custom_plan
AS $fn$
-- Statements over id and ctid arrays rather than one statement over CTE joins:
-- a pass then costs its own size, never a scan of the whole table or hand-off.
DECLARE
    batch_ids uuid[];
    batch_rows tid[];
    locked_ids uuid[];
    locked_ctids tid[];
BEGIN
    EXECUTE pg_catalog.format($q$
        SELECT COALESCE(pg_catalog.array_agg(p.agent_id), '{}'), COALESCE(pg_catalog.array_agg(p.ctid), '{}')
        FROM %s p
        WHERE p.pass_no = $1 AND ($2::uuid IS NULL OR p.agent_id = $2)
        $q$, pending) INTO batch_ids, batch_rows USING this_pass, only_agent;
    picked := pg_catalog.cardinality(batch_ids);

    -- Lock each row by id. SKIP LOCKED: a row an app transaction holds stays
    -- pending for the next flush instead of stalling this one (and every
    -- disconnect behind it). An index lookup, not a fetch by ctid, because
    -- only the index path prunes the page on the way: that frees the room the
    -- last pass's old version took, and the update below stays HOT.
    EXECUTE pg_catalog.format($q$
        SELECT COALESCE(pg_catalog.array_agg(l.id), '{}'), COALESCE(pg_catalog.array_agg(l.ctid), '{}')
        FROM (SELECT wa.id, wa.ctid FROM %s wa
              WHERE wa.id = ANY ($1)
              FOR UPDATE OF wa SKIP LOCKED) l
        $q$, agents) INTO locked_ids, locked_ctids USING batch_ids;
    merged := pg_catalog.cardinality(locked_ids);

    EXECUTE pg_catalog.format($q$
    WITH done AS (
        DELETE FROM %1$s p
        WHERE p.ctid = ANY ($1) AND p.agent_id = ANY ($2)
        RETURNING p.agent_id, p.first_at, p.last_at, p.replica_id, p.beats
    ),
    changed AS (
        -- SET reads wa.* from the row version it updates (locked above, so the
        -- latest committed one), so no disconnect is ever undone.
        UPDATE %2$s wa SET
            first_connected_at = LEAST(wa.first_connected_at, d.first_at),
            last_connected_at = GREATEST(wa.last_connected_at, d.last_at),
            last_connected_replica_id = CASE
                WHEN wa.last_connected_at IS NULL OR d.last_at > wa.last_connected_at
                    THEN d.replica_id
                WHEN d.last_at = wa.last_connected_at
                    THEN GREATEST(wa.last_connected_replica_id, d.replica_id)
                ELSE wa.last_connected_replica_id
            END,
            -- A disconnect at or after the newest beat stands (ties: the
            -- disconnect comes last); an older one is cleared by the beat.
            disconnected_at = CASE
                WHEN wa.last_connected_at > d.last_at THEN wa.disconnected_at
                WHEN wa.disconnected_at >= d.last_at THEN wa.disconnected_at
            END,
            -- As Coder writes it: the event's own instant, never backwards (an
            -- app's lifecycle update may have set a newer one).
            updated_at = GREATEST(wa.updated_at, d.last_at)
        FROM done d
        WHERE wa.ctid = ANY ($3)    -- the versions locked above: fetched by ctid
          AND wa.id = d.agent_id
          -- Only rows whose values change are rewritten (no dead tuple, no WAL otherwise).
          AND (wa.first_connected_at IS NULL OR d.first_at < wa.first_connected_at
               OR wa.last_connected_at IS NULL OR d.last_at > wa.last_connected_at
               OR (d.last_at = wa.last_connected_at
                   AND (d.replica_id > wa.last_connected_replica_id
                        OR (wa.last_connected_replica_id IS NULL AND d.replica_id IS NOT NULL)
                        OR wa.disconnected_at < d.last_at)))
        RETURNING wa.id, d.last_at
    )
    SELECT (SELECT pg_catalog.count(*) FROM changed),
           (SELECT COALESCE(pg_catalog.sum(d.beats), 0)::bigint FROM done d
             WHERE NOT EXISTS (SELECT FROM changed c WHERE c.id = d.agent_id)),
           (SELECT pg_catalog.max(c.last_at) FROM changed c)
    $q$, pending, agents) INTO updated, stale_beats, newest_event_at USING batch_rows, locked_ids, locked_ctids;
    RETURN NEXT;
END
$fn$;
COMMENT ON FUNCTION pybatch.merge_pass_in(regclass, regclass, integer, uuid) IS
    'Internal: merges the pending rows of one pass (or one agent of it) into the agents relation, skipping rows locked by others. Runs with its caller''s rights.';

-- ---------------------------------------------------------------------------
-- The next pass, on any set of relations. A failing pass is retried one agent
-- at a time: agents that fail alone go to quarantine when the others merge;
-- when nothing merges at all the failure is systemic and everything stays pending.
-- ---------------------------------------------------------------------------
CREATE FUNCTION pybatch.next_pass_in(result pybatch.flush_result, pending regclass, agents regclass,
                                     quarantine regclass)
RETURNS pybatch.flush_result
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    this_pass integer;
    hot_before bigint;
    step record;
    agent record;
    isolated_ok bigint := 0;
    failed_agents uuid[] := '{}';
    failed_errors text[] := '{}';
    error_state text;
    error_message text;
    first_error text;
    retry_first timestamptz;
    deferred bigint;
BEGIN
    EXECUTE pg_catalog.format('SELECT pg_catalog.min(p.pass_no) FROM %s p', pending) INTO this_pass;
    IF this_pass IS NULL THEN
        RETURN result;  -- nothing left: passes does not grow, the caller stops
    END IF;
    result.passes := result.passes + 1;
    -- Counters of this transaction, so a pass counts its own HOT updates.
    hot_before := pg_catalog.pg_stat_get_xact_tuples_hot_updated(agents);

    BEGIN
        SELECT * INTO STRICT step FROM pybatch.merge_pass_in(pending, agents, this_pass, NULL);
        result.agents_updated := result.agents_updated + step.updated;
        result.stale_heartbeats := result.stale_heartbeats + step.stale_beats;
        result.newest_event_at := GREATEST(result.newest_event_at, step.newest_event_at);
    EXCEPTION WHEN query_canceled THEN
        -- A cancel or statement_timeout is not one agent's fault: stop, keep all.
        GET STACKED DIAGNOSTICS error_state = RETURNED_SQLSTATE, error_message = MESSAGE_TEXT;
        result.error := error_state || ': ' || error_message;
    WHEN OTHERS THEN
        -- Find who fails: the pass again, one agent at a time.
        GET STACKED DIAGNOSTICS error_state = RETURNED_SQLSTATE, error_message = MESSAGE_TEXT;
        first_error := error_state || ': ' || error_message;
        FOR agent IN EXECUTE pg_catalog.format('SELECT p.agent_id FROM %s p WHERE p.pass_no = $1', pending)
                     USING this_pass LOOP
            BEGIN
                SELECT * INTO STRICT step FROM pybatch.merge_pass_in(pending, agents, this_pass, agent.agent_id);
                result.agents_updated := result.agents_updated + step.updated;
                result.stale_heartbeats := result.stale_heartbeats + step.stale_beats;
                result.newest_event_at := GREATEST(result.newest_event_at, step.newest_event_at);
                isolated_ok := isolated_ok + 1;
            EXCEPTION WHEN OTHERS THEN
                GET STACKED DIAGNOSTICS error_state = RETURNED_SQLSTATE, error_message = MESSAGE_TEXT;
                failed_agents := failed_agents || agent.agent_id;
                failed_errors := failed_errors || (error_state || ': ' || error_message);
            END;
        END LOOP;
        IF isolated_ok + result.agents_updated + result.stale_heartbeats = 0 THEN
            -- Nothing merged in this flush: not one agent's fault. Keep all pending.
            result.error := first_error;
            EXECUTE pg_catalog.format('UPDATE %s p SET pass_no = NULL WHERE p.pass_no = $1', pending)
                USING this_pass;
        ELSE
            retry_first := pg_catalog.clock_timestamp();  -- computed first: no volatile call in the DML
            EXECUTE pg_catalog.format($q$
            WITH moved AS (
                DELETE FROM %1$s p WHERE p.agent_id = ANY ($1)
                RETURNING p.agent_id, p.first_at, p.last_at, p.replica_id, p.beats
            )
            INSERT INTO %2$s AS q (agent_id, first_at, last_at, replica_id, beats, error, retry_at)
            SELECT m.agent_id, m.first_at, m.last_at, m.replica_id, m.beats,
                   ($2)[pg_catalog.array_position($1, m.agent_id)],
                   $3 + interval '10 seconds'
            FROM moved m
            ON CONFLICT (agent_id) DO UPDATE SET
                first_at = LEAST(q.first_at, excluded.first_at),
                last_at = GREATEST(q.last_at, excluded.last_at),
                replica_id = CASE
                    WHEN excluded.last_at > q.last_at THEN excluded.replica_id
                    WHEN excluded.last_at = q.last_at THEN GREATEST(q.replica_id, excluded.replica_id)
                    ELSE q.replica_id
                END,
                beats = q.beats + excluded.beats,
                error = excluded.error,
                attempts = q.attempts + 1,
                -- Back-off: 10 s, 20 s, 40 s, ... at most 1 h.
                retry_at = $3 + LEAST(interval '1 hour', interval '10 seconds' * (2 ^ LEAST(q.attempts, 12)))
            $q$, pending, quarantine) USING failed_agents, failed_errors, retry_first;
            result.quarantined_agents := result.quarantined_agents + pg_catalog.cardinality(failed_agents);
        END IF;
    END;

    IF result.error IS NULL THEN
        -- Rows still in this pass were locked by another transaction: next flush.
        EXECUTE pg_catalog.format($q$
            WITH deferred AS (UPDATE %s p SET pass_no = NULL WHERE p.pass_no = $1 RETURNING 1)
            SELECT pg_catalog.count(*) FROM deferred
            $q$, pending) INTO deferred USING this_pass;
        result.deferred_agents := result.deferred_agents + deferred;
    END IF;
    result.hot_updates := result.hot_updates
        + pg_catalog.pg_stat_get_xact_tuples_hot_updated(agents) - hot_before;
    RETURN result;
END
$fn$;
COMMENT ON FUNCTION pybatch.next_pass_in(pybatch.flush_result, regclass, regclass, regclass) IS
    'Internal: merges the pending rows of the lowest pass_no on the given relations (0004''s flush_pass, on any set: a shard group on Citus) and adds its figures to result; agents that fail alone go to quarantine.';

-- ---------------------------------------------------------------------------
-- A zeroed result for the shard and coordinator steps.
-- ---------------------------------------------------------------------------
CREATE FUNCTION pybatch.empty_result()
RETURNS pybatch.flush_result
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    result pybatch.flush_result;
BEGIN
    result.started_at := pg_catalog.clock_timestamp();
    result.skipped := false;
    result.rows_staged := 0;
    result.agents_updated := 0;
    result.stale_heartbeats := 0;
    result.unknown_heartbeats := 0;
    result.future_heartbeats := 0;
    result.passes := 0;
    result.hot_updates := 0;
    result.deferred_agents := 0;
    result.quarantined_agents := 0;
    RETURN result;
END
$fn$;
COMMENT ON FUNCTION pybatch.empty_result() IS
    'Internal: a flush_result with every count 0, started now.';

-- ---------------------------------------------------------------------------
-- flush_begin: checks, the lock, and the hand-off from staging to pending.
-- ---------------------------------------------------------------------------
CREATE FUNCTION pybatch.flush_begin(max_rows bigint DEFAULT NULL, lock_wait interval DEFAULT '0 seconds')
RETURNS pybatch.flush_result
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    result pybatch.flush_result;
    cfg pybatch.settings;
    drained record;
    error_state text;
    error_message text;
BEGIN
    IF max_rows < 0 THEN
        RAISE EXCEPTION 'pybatch.flush: max_rows must be 0 or more, not %', max_rows
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    result := pybatch.empty_result();
    IF NOT pybatch.flush_take_lock(COALESCE(lock_wait, interval '0')) THEN
        result.skipped := true;
        result.duration := pg_catalog.clock_timestamp() - result.started_at;
        RETURN result;
    END IF;
    SELECT * INTO STRICT cfg FROM pybatch.settings;
    -- A subtransaction: on any error the drain rolls back, staging keeps its rows,
    -- and the error is returned.
    BEGIN
        SELECT * INTO STRICT drained FROM pybatch.drain_into(
            'pybatch.heartbeats', 'pybatch.pending', 'public.workspace_agents', 'pybatch.quarantine',
            COALESCE(max_rows, cfg.max_rows_per_flush), cfg.future_tolerance);
        result.rows_staged := drained.rows_staged;
        result.future_heartbeats := drained.future_heartbeats;
        result.unknown_heartbeats := drained.unknown_heartbeats;
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        GET STACKED DIAGNOSTICS error_state = RETURNED_SQLSTATE, error_message = MESSAGE_TEXT;
        result.error := error_state || ': ' || error_message;
    END;
    RETURN result;
END
$$;
COMMENT ON FUNCTION pybatch.flush_begin(bigint, interval) IS
    'Internal step 1 of a flush: takes pybatch.flush_lock (or returns skipped after lock_wait), then drains staging into pybatch.pending, one row per agent numbered by heap page. On error staging is kept and the error returned.';

-- ---------------------------------------------------------------------------
-- flush_pass: the next pass, under the lock.
-- ---------------------------------------------------------------------------
CREATE FUNCTION pybatch.flush_pass(result pybatch.flush_result)
RETURNS pybatch.flush_result
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF result.skipped OR result.error IS NOT NULL THEN
        RETURN result;
    END IF;
    PERFORM pybatch.flush_take_lock(NULL);
    RETURN pybatch.next_pass_in(result, 'pybatch.pending', 'public.workspace_agents', 'pybatch.quarantine');
END
$$;
COMMENT ON FUNCTION pybatch.flush_pass(pybatch.flush_result) IS
    'Internal step 2 of a flush, repeated: merges the pending rows of the lowest pass_no (one row per heap page) and adds its figures to result. passes does not grow when nothing was left.';

-- ---------------------------------------------------------------------------
-- flush_finish: record the flush and purge old history.
-- ---------------------------------------------------------------------------
CREATE FUNCTION pybatch.flush_finish(result pybatch.flush_result)
RETURNS pybatch.flush_result
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    retention interval;
    error_state text;
    error_message text;
BEGIN
    IF result.skipped THEN
        RETURN result;  -- a skipped call did nothing; it is not logged
    END IF;
    result.duration := pg_catalog.clock_timestamp() - result.started_at;
    -- Twice at most: when the record itself fails (a full disk, a user's trigger
    -- on flush_log), that failure is what gets recorded, and the caller (the
    -- pg_cron loop, say) goes on. The merge has committed either way.
    FOR attempt IN 1 .. 2 LOOP
        BEGIN
            INSERT INTO pybatch.flush_log (started_at, duration, rows_staged, agents_updated,
                                           stale_heartbeats, unknown_heartbeats, future_heartbeats, error,
                                           passes, hot_updates, deferred_agents, quarantined_agents,
                                           newest_event_at, heap_bytes, index_bytes)
            VALUES (result.started_at, result.duration, result.rows_staged, result.agents_updated,
                    result.stale_heartbeats, result.unknown_heartbeats, result.future_heartbeats, result.error,
                    result.passes, result.hot_updates, result.deferred_agents, result.quarantined_agents,
                    result.newest_event_at,
                    pg_catalog.pg_relation_size('public.workspace_agents'::pg_catalog.regclass),
                    pg_catalog.pg_indexes_size('public.workspace_agents'::pg_catalog.regclass))
            RETURNING id INTO result.flush_id;
            SELECT s.history_retention INTO retention FROM pybatch.settings s;
            DELETE FROM pybatch.flush_log WHERE started_at < result.started_at - retention;
            EXIT;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS error_state = RETURNED_SQLSTATE, error_message = MESSAGE_TEXT;
            RAISE WARNING 'pybatch: cannot record the flush in flush_log: %: %', error_state, error_message;
            result.error := COALESCE(result.error || '; ', '') || 'flush_log: ' || error_state || ': ' || error_message;
        END;
    END LOOP;
    RETURN result;
END
$$;
COMMENT ON FUNCTION pybatch.flush_finish(pybatch.flush_result) IS
    'Internal step 3 of a flush: logs it in pybatch.flush_log (not when skipped) and purges history older than settings.history_retention.';

-- ---------------------------------------------------------------------------
-- flush_tidy: every hand-off writes, and every pass deletes, a flush's worth of
-- pending rows; autovacuum (once a minute at best) would leave the file growing
-- by that much per flush, and each hand-off scanning it. With nothing pending,
-- start again from an empty file. Its own short transaction (the default path
-- only): TRUNCATE locks out readers of pending (the views) until commit. It
-- gives way at once to anyone holding pending or the flush lock: no step of
-- another flush has pending rows in flight, and no reader waits behind it.
-- ---------------------------------------------------------------------------
CREATE FUNCTION pybatch.flush_tidy()
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    previous_timeout text := pg_catalog.current_setting('lock_timeout');
BEGIN
    IF NOT pybatch.flush_take_lock(interval '100 milliseconds') THEN
        RETURN false;
    END IF;
    BEGIN
        PERFORM pg_catalog.set_config('lock_timeout', '100ms', true);
        IF EXISTS (SELECT FROM pybatch.pending) THEN
            PERFORM pg_catalog.set_config('lock_timeout', previous_timeout, true);
            RETURN false;
        END IF;
        TRUNCATE pybatch.pending;
    EXCEPTION WHEN lock_not_available THEN
        PERFORM pg_catalog.set_config('lock_timeout', previous_timeout, true);
        RETURN false;  -- a reader holds it: the next flush tries again
    END;
    PERFORM pg_catalog.set_config('lock_timeout', previous_timeout, true);
    RETURN true;
END
$$;
COMMENT ON FUNCTION pybatch.flush_tidy() IS
    'Internal, after a committed-pass flush: truncates pybatch.pending when it is empty (its file would otherwise grow by a flush''s worth of dead rows between autovacuum runs); gives way to any lock holder. True when it truncated.';

-- ---------------------------------------------------------------------------
-- Where staging is not here but spread over servers (Citus, migration 0006),
-- the flush runs there: this returns its result. Here it returns NULL and the
-- flush runs in this database. 0006 replaces it.
-- ---------------------------------------------------------------------------
CREATE FUNCTION pybatch.flush_distributed(max_rows bigint, lock_wait interval)
RETURNS pybatch.flush_result
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT NULL::pybatch.flush_result;
$$;
COMMENT ON FUNCTION pybatch.flush_distributed(bigint, interval) IS
    'Internal: the flush where staging is distributed (Citus: each shard group on its worker), or NULL when staging is in this database.';

-- ---------------------------------------------------------------------------
-- The two ways to flush.
-- ---------------------------------------------------------------------------
CREATE PROCEDURE pybatch.flush_in_passes(max_rows bigint DEFAULT NULL,
                                         lock_wait interval DEFAULT '0 seconds',
                                         INOUT result pybatch.flush_result DEFAULT NULL)
LANGUAGE plpgsql
AS $$
-- No SET clause and no SECURITY DEFINER: PostgreSQL forbids COMMIT in a
-- procedure with either. It only calls schema-qualified functions that pin
-- their own search_path; the steps are SECURITY DEFINER.
DECLARE
    passes_before integer;
BEGIN
    result := pybatch.flush_distributed(max_rows, lock_wait);
    IF result.started_at IS NOT NULL THEN
        COMMIT;  -- the workers committed their own passes
        RETURN;
    END IF;
    result := pybatch.flush_begin(max_rows, lock_wait);
    COMMIT;  -- the hand-off is durable (as staging was) before any merge
    LOOP
        passes_before := result.passes;
        result := pybatch.flush_pass(result);
        COMMIT;  -- old versions of this pass become prunable; the next pass stays HOT
        EXIT WHEN result.skipped OR result.error IS NOT NULL OR result.passes = passes_before;
    END LOOP;
    result := pybatch.flush_finish(result);
    COMMIT;
    PERFORM pybatch.flush_tidy();
    COMMIT;
END
$$;
COMMENT ON PROCEDURE pybatch.flush_in_passes(bigint, interval, pybatch.flush_result) IS
    'The default flush: CALL pybatch.flush_in_passes(); outside a transaction block. Commits after the hand-off and after each pass (at most one row per heap page), so updates stay HOT on a fillfactor-100 table. Returns the flush_result. Inside a transaction block use SELECT pybatch.flush() instead.';

CREATE OR REPLACE FUNCTION pybatch.flush(max_rows bigint DEFAULT NULL, lock_wait interval DEFAULT '0 seconds')
RETURNS pybatch.flush_result
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    result pybatch.flush_result;
    passes_before integer;
BEGIN
    result := pybatch.flush_distributed(max_rows, lock_wait);
    IF result.started_at IS NOT NULL THEN
        RETURN result;  -- the workers commit their own passes whatever this transaction does
    END IF;
    -- The same steps in the caller's transaction: correct, but one transaction
    -- cannot prune its own old versions, so on a full page the later passes
    -- go non-HOT. Use CALL pybatch.flush_in_passes() where a COMMIT is allowed.
    result := pybatch.flush_begin(max_rows, lock_wait);
    LOOP
        passes_before := result.passes;
        result := pybatch.flush_pass(result);
        EXIT WHEN result.skipped OR result.error IS NOT NULL OR result.passes = passes_before;
    END LOOP;
    RETURN pybatch.flush_finish(result);
END
$$;
COMMENT ON FUNCTION pybatch.flush(bigint, interval) IS
    'Flush in the caller''s transaction: merges staged heartbeats into public.workspace_agents and logs the flush. Correct anywhere, but the default path is CALL pybatch.flush_in_passes(), which commits between passes and keeps updates HOT.';

-- ---------------------------------------------------------------------------
-- Quarantine: retry now.
-- ---------------------------------------------------------------------------
CREATE FUNCTION pybatch.requeue_quarantined(agent uuid DEFAULT NULL)
RETURNS bigint
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH due AS (
        UPDATE pybatch.quarantine q SET retry_at = '-infinity'
        WHERE agent IS NULL OR q.agent_id = agent
        RETURNING 1
    )
    SELECT pg_catalog.count(*) FROM due;
$$;
COMMENT ON FUNCTION pybatch.requeue_quarantined(uuid) IS
    'Makes quarantined agents (all, or one) due for retry at the next flush; returns how many.';

-- ---------------------------------------------------------------------------
-- disconnect(): the direct write. updated_at is the disconnect's own time, never
-- backwards; the values are computed before the UPDATE (no volatile call in it).
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pybatch.disconnect(agent_id uuid, at timestamptz DEFAULT pg_catalog.now())
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    tolerance interval;
    server_now timestamptz := pg_catalog.clock_timestamp();
BEGIN
    IF disconnect.agent_id IS NULL THEN
        RAISE EXCEPTION 'pybatch.disconnect: agent_id must not be NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF disconnect.at IS NULL THEN
        RAISE EXCEPTION 'pybatch.disconnect: at must not be NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF NOT pg_catalog.isfinite(disconnect.at) THEN
        RAISE EXCEPTION 'pybatch.disconnect: at must be a finite time, not %', disconnect.at
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT s.future_tolerance INTO STRICT tolerance FROM pybatch.settings s;
    IF disconnect.at > server_now + tolerance THEN
        RAISE EXCEPTION 'pybatch.disconnect: time % is ahead of the server clock (%) by more than future_tolerance %',
            disconnect.at, server_now, tolerance
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- A disconnect older than the newest merged heartbeat changes nothing; a
    -- newer one than the recorded disconnect replaces it.
    UPDATE public.workspace_agents wa
    SET disconnected_at = disconnect.at,
        updated_at = GREATEST(wa.updated_at, disconnect.at)
    WHERE wa.id = disconnect.agent_id
      AND (wa.last_connected_at IS NULL OR disconnect.at >= wa.last_connected_at)
      AND (wa.disconnected_at IS NULL OR disconnect.at > wa.disconnected_at);
    IF FOUND THEN
        RETURN true;
    END IF;
    IF NOT EXISTS (SELECT FROM public.workspace_agents wa WHERE wa.id = disconnect.agent_id) THEN
        RAISE EXCEPTION 'pybatch.disconnect: no agent % in public.workspace_agents', disconnect.agent_id
            USING ERRCODE = 'no_data_found';
    END IF;
    RETURN false;
END
$$;

-- ---------------------------------------------------------------------------
-- The pg_cron 1.4 loop runs the committed passes too.
-- ---------------------------------------------------------------------------
DROP FUNCTION pybatch.flush_loop_pass(interval, timestamptz);
CREATE FUNCTION pybatch.flush_loop_next(result pybatch.flush_result, flush_interval interval,
                                        stop_at timestamptz, pass_started timestamptz)
RETURNS timestamptz
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    row_cap bigint;
    next_pass timestamptz;
BEGIN
    IF result.error IS NOT NULL THEN
        RAISE WARNING 'pybatch.flush_loop: flush failed, the loop goes on: %', result.error;
    END IF;
    SELECT s.max_rows_per_flush INTO row_cap FROM pybatch.settings s;
    IF result.error IS NULL AND NOT COALESCE(result.skipped, true)
       AND row_cap IS NOT NULL AND result.rows_staged >= row_cap THEN
        next_pass := pg_catalog.clock_timestamp();  -- capped drain: more is waiting, go again now
    ELSE
        -- From this pass's start, so the flush's own time does not stretch the gap.
        next_pass := pass_started + flush_interval;
    END IF;
    IF next_pass > stop_at THEN
        RETURN NULL;
    END IF;
    RETURN next_pass;
END
$$;
COMMENT ON FUNCTION pybatch.flush_loop_next(pybatch.flush_result, interval, timestamptz, timestamptz) IS
    'Internal to flush_loop(): when the next flush is due after one that started at pass_started (at once after a capped drain), or NULL past stop_at.';

CREATE OR REPLACE PROCEDURE pybatch.flush_loop(flush_interval interval, stop_at timestamptz DEFAULT NULL)
LANGUAGE plpgsql
AS $$
DECLARE
    deadline timestamptz := pybatch.flush_loop_deadline(stop_at);
    pass_started timestamptz;
    result pybatch.flush_result;
    next_pass timestamptz;
BEGIN
    LOOP
        pass_started := pg_catalog.clock_timestamp();
        result := NULL;
        CALL pybatch.flush_in_passes(NULL, interval '0', result);  -- commits its own steps
        next_pass := pybatch.flush_loop_next(result, flush_interval, deadline, pass_started);
        COMMIT;
        EXIT WHEN next_pass IS NULL;
        PERFORM pg_catalog.pg_sleep_until(next_pass);
    END LOOP;
END
$$;
COMMENT ON PROCEDURE pybatch.flush_loop(interval, timestamptz) IS
    'Flushes (CALL pybatch.flush_in_passes) every flush_interval until stop_at (default: 0.5 s before the next minute). pg_cron 1.4 runs it once a minute; a failed flush never ends the loop.';

-- ---------------------------------------------------------------------------
-- `pybatch scheduler` leadership: a lease in a pybatch table, not an advisory
-- key any role could hold forever. The leader renews it every interval; a
-- standby takes it when it expires or when the holder's session is gone.
-- ---------------------------------------------------------------------------
CREATE TABLE pybatch.scheduler_lease (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    holder text,
    holder_pid integer,
    holder_backend_start timestamptz,
    renewed_at timestamptz,
    expires_at timestamptz
);
INSERT INTO pybatch.scheduler_lease DEFAULT VALUES;
COMMENT ON TABLE pybatch.scheduler_lease IS
    'Which `pybatch scheduler` leads (flushes); the others stand by. Taken over when expires_at passes or the holder''s session ends.';

CREATE FUNCTION pybatch.scheduler_claim(holder text, ttl interval)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    my_start timestamptz;
BEGIN
    SELECT a.backend_start INTO my_start FROM pg_catalog.pg_stat_activity a
    WHERE a.pid = pg_catalog.pg_backend_pid();
    UPDATE pybatch.scheduler_lease l SET
        holder = scheduler_claim.holder,
        holder_pid = pg_catalog.pg_backend_pid(),
        holder_backend_start = my_start,
        renewed_at = pg_catalog.clock_timestamp(),
        expires_at = pg_catalog.clock_timestamp() + ttl
    WHERE l.holder_pid IS NULL
       OR l.expires_at < pg_catalog.clock_timestamp()
       OR (l.holder_pid = pg_catalog.pg_backend_pid() AND l.holder_backend_start = my_start)
       OR NOT EXISTS (SELECT FROM pg_catalog.pg_stat_activity a
                      WHERE a.pid = l.holder_pid AND a.backend_start = l.holder_backend_start);
    RETURN FOUND;
END
$$;
COMMENT ON FUNCTION pybatch.scheduler_claim(text, interval) IS
    'Takes or renews the scheduler lease for this session for ttl; false while another live scheduler holds it.';

CREATE FUNCTION pybatch.scheduler_release()
RETURNS boolean
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH released AS (
        UPDATE pybatch.scheduler_lease l
        SET holder = NULL, holder_pid = NULL, holder_backend_start = NULL, expires_at = NULL
        WHERE l.holder_pid = pg_catalog.pg_backend_pid()
        RETURNING 1
    )
    SELECT EXISTS (SELECT FROM released);
$$;
COMMENT ON FUNCTION pybatch.scheduler_release() IS
    'Gives up the scheduler lease if this session holds it, so a standby takes over at once.';

-- ---------------------------------------------------------------------------
-- Functions that write public.workspace_agents are owned by that table's owner
-- (see pybatch.align_owner()), so a trigger its owner adds runs with exactly
-- the owner's rights, never with those of whoever ran migrate.
-- ---------------------------------------------------------------------------
CREATE FUNCTION pybatch.align_owner()
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    table_owner name;
    fn text;
BEGIN
    SELECT c.relowner::pg_catalog.regrole::text INTO STRICT table_owner
    FROM pg_catalog.pg_class c WHERE c.oid = 'public.workspace_agents'::pg_catalog.regclass;
    IF NOT pg_catalog.pg_has_role(current_user, table_owner::pg_catalog.regrole, 'MEMBER') THEN
        RAISE EXCEPTION 'role % cannot act as %, the owner of public.workspace_agents: run `pybatch migrate` as % or a superuser', current_user, table_owner, table_owner
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'pybatch''s merge functions must be owned by the table''s owner, so that its triggers never run with more rights than it has.';
    END IF;
    -- What the merge needs, and nothing else.
    EXECUTE pg_catalog.format('GRANT USAGE ON SCHEMA pybatch TO %s', table_owner);
    EXECUTE pg_catalog.format('GRANT SELECT ON pybatch.settings TO %s', table_owner);
    EXECUTE pg_catalog.format('GRANT SELECT, UPDATE ON pybatch.flush_lock TO %s', table_owner);
    EXECUTE pg_catalog.format('GRANT SELECT, DELETE ON pybatch.heartbeats TO %s', table_owner);
    EXECUTE pg_catalog.format('GRANT SELECT, INSERT, UPDATE, DELETE ON pybatch.pending, pybatch.quarantine TO %s', table_owner);
    EXECUTE pg_catalog.format('GRANT TRUNCATE ON pybatch.pending TO %s', table_owner);
    EXECUTE pg_catalog.format('GRANT SELECT, INSERT, DELETE ON pybatch.flush_log TO %s', table_owner);
    FOREACH fn IN ARRAY ARRAY[
        'pybatch.flush_begin(bigint, interval)',
        'pybatch.flush_pass(pybatch.flush_result)',
        'pybatch.flush_finish(pybatch.flush_result)',
        'pybatch.flush(bigint, interval)',
        'pybatch.flush_distributed(bigint, interval)',
        'pybatch.flush_tidy()',
        'pybatch.flush_take_lock(interval)',
        'pybatch.requeue_quarantined(uuid)',
        'pybatch.disconnect(uuid, timestamptz)']
    LOOP
        EXECUTE pg_catalog.format('ALTER FUNCTION %s OWNER TO %s', fn, table_owner);
    END LOOP;
    RETURN table_owner;
END
$$;
COMMENT ON FUNCTION pybatch.align_owner() IS
    'Run by `pybatch migrate`: gives the functions that write public.workspace_agents to that table''s owner (with the grants the merge needs) and returns the owner. Raises when the caller cannot act as the owner.';

DO $$ BEGIN PERFORM pybatch.align_owner(); END $$;

REVOKE ALL ON pybatch.flush_lock, pybatch.pending, pybatch.quarantine, pybatch.scheduler_lease FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pybatch.scheduler_claim(text, interval), pybatch.scheduler_release() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pybatch.flush_take_lock(interval) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pybatch.flush_distributed(bigint, interval) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pybatch.flush_tidy() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pybatch.flush_begin(bigint, interval) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pybatch.flush_pass(pybatch.flush_result) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pybatch.flush_finish(pybatch.flush_result) FROM PUBLIC;
REVOKE EXECUTE ON PROCEDURE pybatch.flush_in_passes(bigint, interval, pybatch.flush_result) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pybatch.requeue_quarantined(uuid) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pybatch.flush_loop_next(pybatch.flush_result, interval, timestamptz, timestamptz) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pybatch.align_owner() FROM PUBLIC;
GRANT SELECT ON pybatch.flush_lock_holders TO pg_monitor;

-- ===========================================================================
-- from migrations/0005_health.sql
-- ===========================================================================
-- pybatch 0005: health you can act on.
--
-- - The staleness budget (issue 11 #10): Coder marks an agent disconnected
--   inactive_timeout (30 s) after its last_connected_at. A beat can reach the row
--   as late as heartbeat period + client write interval + flush interval + the
--   flush's own duration after the one before it. Two settings describe the
--   parts pybatch cannot see (heartbeat_period, client_write_interval) and
--   pybatch.staleness_budget() adds them up, with the measured flush duration,
--   for doctor, `config set` and `cron install`.
-- - health: `behind` (a capped flush left at least a cap's worth, or pending rows
--   wait too long), the measured worst staleness, and who holds pybatch.flush_lock.
-- - What the passes hand off: staging_summary and agent_status include
--   pybatch.pending (handed off, not merged yet) and pybatch.quarantine.
-- - flush_history shows 0004's per-flush figures; pybatch.table_shape() measures
--   the target table for doctor.
-- Views are changed with CREATE OR REPLACE and only gain columns at the end.

-- ---------------------------------------------------------------------------
-- Settings: the parts of the staleness budget outside PostgreSQL.
-- ---------------------------------------------------------------------------
ALTER TABLE pybatch.settings
    ADD COLUMN heartbeat_period interval NOT NULL DEFAULT interval '15 seconds',
    ADD COLUMN client_write_interval interval NOT NULL DEFAULT interval '1 second',
    ADD CONSTRAINT settings_heartbeat_period_range
        CHECK (heartbeat_period BETWEEN interval '1 second' AND interval '1 hour'),
    ADD CONSTRAINT settings_client_write_interval_range
        CHECK (client_write_interval BETWEEN interval '0' AND interval '1 hour');
COMMENT ON COLUMN pybatch.settings.heartbeat_period IS
    'How often each agent''s heartbeat is written (Coder: AgentConnectionUpdateFrequency, 15 s). 1 s to 1 h. Part of the staleness budget (pybatch.staleness_budget()).';
COMMENT ON COLUMN pybatch.settings.client_write_interval IS
    'How long a beat may wait in a client before it reaches staging (HeartbeatClient write_interval, 1 s by default; 0 for immediate mode). 0 to 1 h. Part of the staleness budget.';

-- ---------------------------------------------------------------------------
-- A duration for people: "12.3 s".
-- ---------------------------------------------------------------------------
CREATE FUNCTION pybatch.seconds_text(duration interval)
RETURNS text
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.round(EXTRACT(EPOCH FROM duration), 1)::text || ' s';
$$;
COMMENT ON FUNCTION pybatch.seconds_text(interval) IS
    'Internal: an interval as seconds with one decimal ("12.3 s"), for the reasons the views give.';

-- ---------------------------------------------------------------------------
-- The staleness budget. NULL arguments take the stored settings, so a caller can
-- ask "what if flush_interval were 25 s?" before storing it.
-- ---------------------------------------------------------------------------
CREATE FUNCTION pybatch.staleness_budget(new_flush_interval interval DEFAULT NULL,
                                         new_heartbeat_period interval DEFAULT NULL,
                                         new_client_write_interval interval DEFAULT NULL,
                                         new_inactive_timeout interval DEFAULT NULL)
RETURNS TABLE (
    heartbeat_period interval,
    client_write_interval interval,
    flush_interval interval,
    flush_duration interval,
    flush_duration_measured boolean,
    worst_staleness interval,
    inactive_timeout interval,
    margin interval,
    max_flush_interval interval,
    verdict text,
    allowed boolean,
    reason text
)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH cfg AS (
        SELECT COALESCE(new_heartbeat_period, s.heartbeat_period) AS period,
               COALESCE(new_client_write_interval, s.client_write_interval) AS write_interval,
               COALESCE(new_flush_interval, s.flush_interval) AS flush_interval,
               COALESCE(new_inactive_timeout, s.inactive_timeout) AS timeout
        FROM pybatch.settings s
    ), measured AS (
        -- The flush's own duration: the longest of the last 20 successful flushes.
        SELECT pg_catalog.max(r.duration) AS duration
        FROM (SELECT l.duration FROM pybatch.flush_log l WHERE l.error IS NULL
              ORDER BY l.started_at DESC LIMIT 20) r
    ), parts AS (
        SELECT c.*,
               COALESCE(m.duration, interval '1 second') AS duration,  -- assumed until one is measured
               m.duration IS NOT NULL AS measured,
               GREATEST(interval '2 seconds', c.timeout / 5) AS margin
        FROM cfg c CROSS JOIN measured m
    ), summed AS (
        SELECT p.*,
               p.period + p.write_interval + p.flush_interval + p.duration AS worst,
               p.timeout - p.margin - (p.period + p.write_interval + p.duration) AS room
        FROM parts p
    ), judged AS (
        SELECT s.*,
               CASE WHEN s.worst <= s.timeout - s.margin THEN 'ok'
                    WHEN s.worst <= s.timeout THEN 'tight'
                    ELSE 'exceeds' END AS verdict
        FROM summed s
    )
    SELECT j.period, j.write_interval, j.flush_interval, j.duration, j.measured, j.worst, j.timeout,
           j.margin,
           CASE WHEN j.room > interval '0' THEN j.room END,
           j.verdict,
           j.verdict <> 'exceeds',
           'heartbeat period ' || pybatch.seconds_text(j.period)
           || ' + client write interval ' || pybatch.seconds_text(j.write_interval)
           || ' + flush interval ' || pybatch.seconds_text(j.flush_interval)
           || ' + flush duration ' || pybatch.seconds_text(j.duration)
           || CASE WHEN j.measured THEN ' (longest of the last 20 flushes)' ELSE ' (assumed: no flush measured yet)' END
           || ' = ' || pybatch.seconds_text(j.worst)
           || CASE j.verdict
                  WHEN 'ok' THEN ', within inactive_timeout ' || pybatch.seconds_text(j.timeout)
                                 || ' with a margin of at least ' || pybatch.seconds_text(j.margin)
                  WHEN 'tight' THEN ', within inactive_timeout ' || pybatch.seconds_text(j.timeout)
                                 || ' but with less than the ' || pybatch.seconds_text(j.margin)
                                 || ' margin: a slow flush or clock skew makes healthy agents look disconnected'
                  ELSE ', over inactive_timeout ' || pybatch.seconds_text(j.timeout)
                       || ': healthy agents will show as disconnected'
              END
           || CASE WHEN j.verdict = 'ok' THEN ''
                   WHEN j.room > interval '0' THEN '; use a flush_interval of at most ' || pybatch.seconds_text(j.room)
                   ELSE '; no flush_interval fits: shorten heartbeat_period or client_write_interval, '
                        'or raise inactive_timeout' END
    FROM judged j;
$$;
COMMENT ON FUNCTION pybatch.staleness_budget(interval, interval, interval, interval) IS
    'The staleness budget: heartbeat_period + client_write_interval + flush_interval + the flush''s duration (the longest of the last 20 successful flushes; 1 s assumed before any) is how stale last_connected_at can get, against inactive_timeout. verdict ok (within, with margin = max(2 s, inactive_timeout / 5)), tight (within, less margin) or exceeds; allowed = verdict <> exceeds (what `config set` and `cron install` require). NULL arguments take the stored settings; pass new_flush_interval (etc.) to judge a value before storing it. max_flush_interval: the longest flush_interval that keeps the margin (NULL: none does).';

-- The budget for the stored settings, as a view: monitoring roles (pg_monitor, and
-- `pybatch grant reader`, which covers the functions views call) read it.
CREATE VIEW pybatch.staleness AS
SELECT b.heartbeat_period, b.client_write_interval, b.flush_interval, b.flush_duration,
       b.flush_duration_measured, b.worst_staleness, b.inactive_timeout, b.margin, b.max_flush_interval,
       b.verdict, b.allowed, b.reason
FROM pybatch.staleness_budget() b;
COMMENT ON VIEW pybatch.staleness IS
    'One row: pybatch.staleness_budget() for the stored settings (how stale last_connected_at can get, against inactive_timeout).';
COMMENT ON COLUMN pybatch.staleness.heartbeat_period IS 'settings.heartbeat_period.';
COMMENT ON COLUMN pybatch.staleness.client_write_interval IS 'settings.client_write_interval.';
COMMENT ON COLUMN pybatch.staleness.flush_interval IS 'settings.flush_interval.';
COMMENT ON COLUMN pybatch.staleness.flush_duration IS 'The longest of the last 20 successful flushes (1 s assumed before any).';
COMMENT ON COLUMN pybatch.staleness.flush_duration_measured IS 'False while no flush is recorded (flush_duration is assumed).';
COMMENT ON COLUMN pybatch.staleness.worst_staleness IS 'The sum of the four parts: the worst last_connected_at staleness they allow.';
COMMENT ON COLUMN pybatch.staleness.inactive_timeout IS 'settings.inactive_timeout: Coder calls an agent disconnected past it.';
COMMENT ON COLUMN pybatch.staleness.margin IS 'The margin verdict ok requires: max(2 s, inactive_timeout / 5).';
COMMENT ON COLUMN pybatch.staleness.max_flush_interval IS 'The longest flush_interval that keeps the margin; NULL when none does.';
COMMENT ON COLUMN pybatch.staleness.verdict IS 'ok, tight (within inactive_timeout, less than the margin) or exceeds.';
COMMENT ON COLUMN pybatch.staleness.allowed IS 'False when verdict is exceeds: `config set` and `cron install` refuse such values.';
COMMENT ON COLUMN pybatch.staleness.reason IS 'The sum spelled out, and what to change, for people.';
REVOKE EXECUTE ON FUNCTION pybatch.staleness_budget(interval, interval, interval, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pybatch.staleness_budget(interval, interval, interval, interval) TO pg_monitor;
GRANT SELECT ON pybatch.staleness TO pg_monitor;

-- ---------------------------------------------------------------------------
-- pending and quarantine at a glance. pybatch.pending is UNLOGGED, so on a hot
-- standby its figures are NULL; quarantine is a logged table and always read.
-- ---------------------------------------------------------------------------
CREATE FUNCTION pybatch.pending_stats()
RETURNS TABLE (
    pending_agents bigint,
    pending_beats bigint,
    deferred_agents bigint,
    oldest_pending_at timestamptz,
    quarantined_agents bigint,
    quarantined_beats bigint,
    oldest_quarantined_at timestamptz,
    quarantine_next_retry_at timestamptz,
    quarantine_sample_agent uuid,
    quarantine_sample_error text
)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT pg_catalog.pg_is_in_recovery() THEN
        SELECT pg_catalog.count(*), COALESCE(pg_catalog.sum(p.beats), 0),
               pg_catalog.count(*) FILTER (WHERE p.pass_no IS NULL), pg_catalog.min(p.first_at)
        INTO pending_agents, pending_beats, deferred_agents, oldest_pending_at
        FROM pybatch.pending p;
    END IF;
    SELECT pg_catalog.count(*), COALESCE(pg_catalog.sum(q.beats), 0),
           pg_catalog.min(q.quarantined_at), pg_catalog.min(q.retry_at)
    INTO quarantined_agents, quarantined_beats, oldest_quarantined_at, quarantine_next_retry_at
    FROM pybatch.quarantine q;
    -- The sample: the agent quarantined longest, with its last error.
    SELECT q.agent_id, q.error INTO quarantine_sample_agent, quarantine_sample_error
    FROM pybatch.quarantine q ORDER BY q.quarantined_at, q.agent_id LIMIT 1;
    RETURN NEXT;
END
$$;
COMMENT ON FUNCTION pybatch.pending_stats() IS
    'Backs the pending and quarantine columns of pybatch.staging_summary: one row (pending figures NULL on a hot standby).';

-- Newest pending beat per agent; no rows on a hot standby.
CREATE FUNCTION pybatch.pending_latest_beats()
RETURNS TABLE (agent_id uuid, latest_beat_at timestamptz)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF pg_catalog.pg_is_in_recovery() THEN
        RETURN;
    END IF;
    RETURN QUERY SELECT p.agent_id, p.last_at FROM pybatch.pending p;
END
$$;
COMMENT ON FUNCTION pybatch.pending_latest_beats() IS
    'Backs pybatch.agent_status: the newest beat of each agent handed off to pybatch.pending and not merged yet (none on a hot standby).';

REVOKE EXECUTE ON FUNCTION pybatch.pending_stats() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pybatch.pending_latest_beats() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pybatch.pending_stats(), pybatch.pending_latest_beats() TO pg_monitor;

CREATE OR REPLACE VIEW pybatch.staging_summary AS
SELECT s.available, s.reason, s.estimated, s.method, s.rows_staged, s.distinct_agents,
       s.oldest_beat_at, s.newest_beat_at, s.oldest_beat_age, s.newest_beat_age, s.size_bytes,
       p.pending_agents, p.pending_beats, p.deferred_agents, p.oldest_pending_at,
       pg_catalog.now() - p.oldest_pending_at AS oldest_pending_age,
       p.quarantined_agents, p.quarantined_beats, p.oldest_quarantined_at, p.quarantine_next_retry_at,
       p.quarantine_sample_agent, p.quarantine_sample_error
FROM pybatch.staging_stats() s
CROSS JOIN pybatch.pending_stats() p;
COMMENT ON VIEW pybatch.staging_summary IS
    'One row: what waits to be merged. Staging (pybatch.heartbeats): exact while small (up to 8 MB), else estimates (estimated is true). pybatch.pending: beats a flush handed off and has not merged yet (deferred: the agent''s row was locked, they wait for the next flush). pybatch.quarantine: agents whose merge failed alone. On a hot standby available is false and the staging and pending figures are NULL.';
COMMENT ON COLUMN pybatch.staging_summary.pending_agents IS 'Agents in pybatch.pending: handed off by a flush, not merged yet (normally 0 between flushes). NULL on a hot standby.';
COMMENT ON COLUMN pybatch.staging_summary.pending_beats IS 'Heartbeats those pending rows stand for.';
COMMENT ON COLUMN pybatch.staging_summary.deferred_agents IS 'Pending agents deferred to the next flush because another transaction held their row locked.';
COMMENT ON COLUMN pybatch.staging_summary.oldest_pending_at IS 'Oldest beat among pending rows.';
COMMENT ON COLUMN pybatch.staging_summary.oldest_pending_age IS 'now() - oldest_pending_at.';
COMMENT ON COLUMN pybatch.staging_summary.quarantined_agents IS 'Agents in pybatch.quarantine: their merge failed alone; their beats are kept and retried.';
COMMENT ON COLUMN pybatch.staging_summary.quarantined_beats IS 'Heartbeats kept in quarantine.';
COMMENT ON COLUMN pybatch.staging_summary.oldest_quarantined_at IS 'When the longest-quarantined agent went there.';
COMMENT ON COLUMN pybatch.staging_summary.quarantine_next_retry_at IS 'When the next quarantined agent is retried (SELECT pybatch.requeue_quarantined() retries all now).';
COMMENT ON COLUMN pybatch.staging_summary.quarantine_sample_agent IS 'The longest-quarantined agent.';
COMMENT ON COLUMN pybatch.staging_summary.quarantine_sample_error IS 'Its last merge error (SQLSTATE: message).';

-- ---------------------------------------------------------------------------
-- agent_status: a beat handed off to pending is as "newer" as a staged one.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE VIEW pybatch.agent_status AS
SELECT wa.id AS agent_id,
       CASE
           WHEN wa.first_connected_at IS NULL THEN
               CASE WHEN wa.connection_timeout_seconds > 0
                         AND pg_catalog.now() - wa.created_at
                             > pg_catalog.make_interval(secs => wa.connection_timeout_seconds)
                    THEN 'timeout' ELSE 'connecting' END
           WHEN COALESCE(wa.disconnected_at, '-infinity') >= COALESCE(wa.last_connected_at, '-infinity')
               THEN 'disconnected'
           WHEN wa.last_connected_at IS NULL
                OR pg_catalog.now() - wa.last_connected_at > s.inactive_timeout
               THEN 'disconnected'
           ELSE 'connected'
       END AS status,
       wa.created_at,
       wa.first_connected_at,
       wa.last_connected_at,
       wa.disconnected_at,
       wa.connection_timeout_seconds,
       b.latest_beat_at AS staged_beat_at,
       CASE WHEN pg_catalog.pg_is_in_recovery() THEN NULL
            ELSE COALESCE(GREATEST(b.latest_beat_at, p.latest_beat_at)
                          > COALESCE(wa.last_connected_at, '-infinity'), false)
       END AS newer_heartbeat_staged,
       p.latest_beat_at AS pending_beat_at,
       q.last_at AS quarantined_beat_at,
       q.error AS quarantine_error,
       q.retry_at AS quarantine_retry_at
FROM public.workspace_agents wa
CROSS JOIN pybatch.settings s
LEFT JOIN pybatch.staged_latest_beats() b ON b.agent_id = wa.id
LEFT JOIN pybatch.pending_latest_beats() p ON p.agent_id = wa.id
LEFT JOIN pybatch.quarantine q ON q.agent_id = wa.id;
COMMENT ON VIEW pybatch.agent_status IS
    'One row per agent of public.workspace_agents with Coder''s status (connecting, connected, disconnected, timeout) using settings.inactive_timeout, and whether a newer heartbeat still waits to be merged, in staging or handed off to pybatch.pending (the answer to "why does this agent look stale?"); a quarantined agent shows its error. Reads all of staging and pending once per query.';
COMMENT ON COLUMN pybatch.agent_status.newer_heartbeat_staged IS 'True when staging or pybatch.pending holds a heartbeat newer than last_connected_at: a coming flush will move it. NULL on a hot standby.';
COMMENT ON COLUMN pybatch.agent_status.pending_beat_at IS 'Newest beat of this agent handed off to pybatch.pending and not merged yet (deferred when its row was locked); NULL if none (or on a hot standby).';
COMMENT ON COLUMN pybatch.agent_status.quarantined_beat_at IS 'Newest beat kept in pybatch.quarantine for this agent; NULL when it is not quarantined.';
COMMENT ON COLUMN pybatch.agent_status.quarantine_error IS 'Why this agent''s merge failed (it is quarantined and retried with back-off); NULL when not quarantined.';
COMMENT ON COLUMN pybatch.agent_status.quarantine_retry_at IS 'When the quarantined agent is retried next.';

-- ---------------------------------------------------------------------------
-- flush_history: 0004's figures per flush.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE VIEW pybatch.flush_history AS
SELECT l.id AS flush_id,
       l.started_at,
       l.started_at + l.duration AS finished_at,
       l.error IS NULL AS succeeded,
       l.rows_staged,
       l.agents_updated,
       l.stale_heartbeats,
       l.unknown_heartbeats,
       l.future_heartbeats,
       l.duration,
       l.error,
       l.passes,
       l.hot_updates,
       l.deferred_agents,
       l.quarantined_agents,
       l.newest_event_at,
       l.heap_bytes,
       l.index_bytes
FROM pybatch.flush_log l
ORDER BY l.started_at DESC, l.id DESC;
COMMENT ON COLUMN pybatch.flush_history.passes IS 'Committed passes the merge took (at most one row per heap page each).';
COMMENT ON COLUMN pybatch.flush_history.hot_updates IS 'Of agents_updated, how many were HOT updates.';
COMMENT ON COLUMN pybatch.flush_history.deferred_agents IS 'Agents whose row another transaction held locked: left in pybatch.pending for the next flush.';
COMMENT ON COLUMN pybatch.flush_history.quarantined_agents IS 'Agents whose merge failed alone and went to pybatch.quarantine.';
COMMENT ON COLUMN pybatch.flush_history.newest_event_at IS 'Newest beat_at the flush applied.';
COMMENT ON COLUMN pybatch.flush_history.heap_bytes IS 'Size of public.workspace_agents (heap) after the flush.';
COMMENT ON COLUMN pybatch.flush_history.index_bytes IS 'Size of its indexes after the flush.';

-- ---------------------------------------------------------------------------
-- behind: flushes succeed on time but do not keep up.
-- ---------------------------------------------------------------------------
CREATE FUNCTION pybatch.backlog_verdict()
RETURNS TABLE (behind boolean, reason text)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cfg pybatch.settings;
    last_drained bigint;
    last_duration interval;
    waiting bigint;
    stuck_agents bigint;
    oldest timestamptz;
    patience interval;
BEGIN
    IF pg_catalog.pg_is_in_recovery() THEN
        RETURN QUERY SELECT NULL::boolean, 'hot standby: staging and pending exist only on the primary'::text;
        RETURN;
    END IF;
    SELECT * INTO STRICT cfg FROM pybatch.settings;
    SELECT l.rows_staged, l.duration INTO last_drained, last_duration
    FROM pybatch.flush_log l WHERE l.error IS NULL
    ORDER BY l.started_at DESC, l.id DESC LIMIT 1;

    -- 1. The last flush drained its cap and at least a cap's worth still waits:
    --    the next flush is capped too (the backlog grew, or is still being worked off).
    IF cfg.max_rows_per_flush IS NOT NULL AND last_drained >= cfg.max_rows_per_flush THEN
        SELECT pg_catalog.count(*) INTO waiting
        FROM (SELECT FROM pybatch.heartbeats h LIMIT cfg.max_rows_per_flush) s;
        IF waiting >= cfg.max_rows_per_flush THEN
            RETURN QUERY SELECT true,
                'the last flush drained its cap of ' || cfg.max_rows_per_flush::text
                || ' heartbeats (max_rows_per_flush) and at least as many still wait in staging: flushes are not keeping up';
            RETURN;
        END IF;
    END IF;

    -- 2. Beats handed off to pybatch.pending wait longer than a flush needs to
    --    merge them (two intervals + the client's write interval + the last flush's
    --    duration): deferred again and again because an app keeps their rows locked.
    patience := 2 * cfg.flush_interval + cfg.client_write_interval + COALESCE(last_duration, interval '0');
    SELECT pg_catalog.count(*), pg_catalog.min(p.first_at) INTO stuck_agents, oldest
    FROM pybatch.pending p WHERE p.first_at < pg_catalog.now() - patience;
    IF stuck_agents > 0 THEN
        RETURN QUERY SELECT true,
            stuck_agents::text || ' agent(s) in pybatch.pending have waited up to '
            || pybatch.seconds_text(pg_catalog.now() - oldest) || ' (over ' || pybatch.seconds_text(patience)
            || ') to be merged: their rows are kept locked by another transaction (see pg_locks on public.workspace_agents)';
        RETURN;
    END IF;
    RETURN QUERY SELECT false, NULL::text;
END
$$;
COMMENT ON FUNCTION pybatch.backlog_verdict() IS
    'Backs pybatch.health''s behind: true when the last successful flush drained max_rows_per_flush and at least as many still wait in staging, or when rows in pybatch.pending have waited over 2 flush intervals + client_write_interval + the last flush''s duration. NULL on a hot standby.';
REVOKE EXECUTE ON FUNCTION pybatch.backlog_verdict() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pybatch.backlog_verdict() TO pg_monitor;

-- ---------------------------------------------------------------------------
-- health: ok, late, behind or stalled; the measured worst staleness; who holds
-- the flush lock.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE VIEW pybatch.health AS
WITH cfg AS (
    SELECT s.flush_interval, s.heartbeat_period, s.client_write_interval FROM pybatch.settings s
), last_success AS (
    SELECT l.started_at, l.started_at + l.duration AS finished_at
    FROM pybatch.flush_log l
    WHERE l.error IS NULL
    ORDER BY l.started_at DESC
    LIMIT 1
), last_failure AS (
    SELECT l.started_at + l.duration AS finished_at, l.error
    FROM pybatch.flush_log l
    WHERE l.error IS NOT NULL
    ORDER BY l.started_at DESC
    LIMIT 1
), windows AS (
    -- A beat staged just after one successful flush drained is merged by the end of
    -- the next: its wait is that flush's finish - the previous flush's start.
    SELECT r.started_at + r.duration
           - pg_catalog.lag(r.started_at) OVER (ORDER BY r.started_at, r.id) AS wait
    FROM (SELECT l.id, l.started_at, l.duration FROM pybatch.flush_log l WHERE l.error IS NULL
          ORDER BY l.started_at DESC, l.id DESC LIMIT 21) r
), waited AS (
    -- ... and a beat staged after the last one started has waited now() - that start.
    SELECT GREATEST((SELECT pg_catalog.max(w.wait) FROM windows w),
                    (SELECT pg_catalog.now() - ok.started_at FROM last_success ok)) AS max_wait
), holders AS (
    SELECT pg_catalog.string_agg(
               pg_catalog.format('pid %s (role %s, application %s) for %s', h.pid,
                                 COALESCE(h.role::text, '?'), COALESCE(NULLIF(h.application_name, ''), '?'),
                                 COALESCE(pybatch.seconds_text(h.for_how_long), '?')),
               ', ' ORDER BY h.xact_start) COLLATE "default" AS held_by  -- role names sort as "C"
    FROM pybatch.flush_lock_holders h
    WHERE h.holding
), judged AS (
    SELECT cfg.flush_interval,
           ok.finished_at AS last_success_at,
           pg_catalog.now() - ok.finished_at AS last_success_age,
           bad.finished_at AS last_failure_at,
           bad.error AS last_error,
           b.behind,
           b.reason AS behind_reason,
           cfg.heartbeat_period + cfg.client_write_interval + w.max_wait AS worst_staleness,
           w.max_wait,
           hl.held_by
    FROM cfg
    LEFT JOIN last_success ok ON true
    LEFT JOIN last_failure bad ON true
    CROSS JOIN waited w
    CROSS JOIN holders hl
    CROSS JOIN pybatch.backlog_verdict() b
)
SELECT j.last_success_at,
       j.last_success_age,
       j.flush_interval,
       CASE
           WHEN j.last_success_at IS NULL THEN 'stalled'
           WHEN j.last_success_age > 5 * j.flush_interval THEN 'stalled'
           WHEN j.last_success_age > 2 * j.flush_interval THEN 'late'
           WHEN j.behind THEN 'behind'
           ELSE 'ok'
       END AS status,
       CASE
           WHEN j.last_success_at IS NULL THEN
               'no successful flush recorded in pybatch.flush_log'
               || CASE WHEN j.held_by IS NOT NULL THEN '; flushes are skipped: pybatch.flush_lock is held by ' || j.held_by
                       WHEN j.last_error IS NOT NULL THEN '; last flush failed: ' || j.last_error
                       ELSE '; is a scheduler running (pg_cron job or `pybatch scheduler`)?' END
           WHEN j.last_success_age <= 2 * j.flush_interval THEN
               CASE WHEN j.behind THEN j.behind_reason
                    ELSE 'last successful flush ' || pybatch.seconds_text(j.last_success_age)
                         || ' ago, within 2 flush intervals' END
           ELSE
               'last successful flush ' || pybatch.seconds_text(j.last_success_age)
               || ' ago, over ' || CASE WHEN j.last_success_age <= 5 * j.flush_interval THEN '2' ELSE '5' END
               || ' flush intervals of ' || j.flush_interval::text
               || CASE WHEN j.held_by IS NOT NULL THEN '; flushes are skipped: pybatch.flush_lock is held by ' || j.held_by
                       WHEN j.last_failure_at > j.last_success_at THEN '; last flush failed: ' || j.last_error
                       ELSE '; is a scheduler running (pg_cron job or `pybatch scheduler`)?' END
       END AS reason,
       j.last_failure_at,
       j.last_error,
       j.behind,
       j.worst_staleness,
       j.max_wait AS max_beat_wait,
       j.held_by AS flush_lock_held_by
FROM judged j;
COMMENT ON VIEW pybatch.health IS
    'One row: is flushing keeping up? status ok (last success within 2 flush intervals and not behind), behind (on time, but the last flush was capped with a cap''s worth still staged, or pending rows wait too long), late (last success within 5 intervals) or stalled (older, or never), with a reason that names who holds pybatch.flush_lock when flushes are being skipped. Also the measured worst staleness of last_connected_at. Usable as a liveness check, also on a hot standby.';
COMMENT ON COLUMN pybatch.health.status IS 'ok, behind, late or stalled (the first that applies, worst first: stalled, late, behind).';
COMMENT ON COLUMN pybatch.health.behind IS 'True when flushes do not keep up although they run (see pybatch.backlog_verdict()); NULL on a hot standby.';
COMMENT ON COLUMN pybatch.health.worst_staleness IS 'Measured: settings.heartbeat_period + settings.client_write_interval + max_beat_wait. How stale a connected agent''s last_connected_at got at worst lately; compare with settings.inactive_timeout.';
COMMENT ON COLUMN pybatch.health.max_beat_wait IS 'Measured over the last 20 successful flushes: the longest time from one flush''s start to the next one''s end (a beat staged just after a drain waits that long), or now() - the last start if longer. Beats deferred or capped wait longer (see behind).';
COMMENT ON COLUMN pybatch.health.flush_lock_held_by IS 'Sessions holding pybatch.flush_lock now (pid, role, application, for how long), from pybatch.flush_lock_holders; NULL when free.';

-- ---------------------------------------------------------------------------
-- The target table's shape, measured (doctor reports it).
-- ---------------------------------------------------------------------------
CREATE FUNCTION pybatch.table_shape(max_pages integer DEFAULT 2000)
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

-- ---------------------------------------------------------------------------
-- 0004's flush_lock_holders, documented column by column like the other views.
-- ---------------------------------------------------------------------------
COMMENT ON COLUMN pybatch.flush_lock_holders.pid IS 'Backend process id of the session.';
COMMENT ON COLUMN pybatch.flush_lock_holders.holding IS 'True: it holds pybatch.flush_lock (runs a flush step, or an open transaction that called SELECT pybatch.flush()); false: it waits for the holder.';
COMMENT ON COLUMN pybatch.flush_lock_holders.role IS 'The session''s role (pg_stat_activity.usename).';
COMMENT ON COLUMN pybatch.flush_lock_holders.application_name IS 'The session''s application_name (pg_cron, pybatch scheduler, an app...).';
COMMENT ON COLUMN pybatch.flush_lock_holders.client_addr IS 'The client''s address; NULL over a Unix socket.';
COMMENT ON COLUMN pybatch.flush_lock_holders.xact_start IS 'When its transaction started.';
COMMENT ON COLUMN pybatch.flush_lock_holders.state IS 'pg_stat_activity.state: active, idle in transaction, ...';
COMMENT ON COLUMN pybatch.flush_lock_holders.for_how_long IS 'now() - xact_start: how long its transaction has held (or waited for) the lock.';

-- ===========================================================================
-- from migrations/0006_citus.sql
-- ===========================================================================
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

-- ===========================================================================
-- from migrations/0007_pass_by_ctid.sql
-- ===========================================================================
-- pybatch 0007: each pass's update fetches its rows by ctid, as 0004 meant it to.
-- 0004's merge_pass_in() locks a pass's rows by primary key (the index path
-- prunes each page, which keeps the update HOT) and then updates them by the
-- ctids it locked. With sequential scans off for the function, the planner
-- still preferred a full scan of the primary key to thousands of ctid fetches
-- once the table had grown past a pass: every pass then read the whole index
-- (100,000 entries per pass at 100k agents). Index scans off as well leave the
-- lock its bitmap index scan (which prunes too) and the update a TID scan, so a
-- pass costs its own rows again. Measured: docs/benchmarks.md.

ALTER FUNCTION pybatch.merge_pass_in(regclass, regclass, integer, uuid) SET enable_indexscan = off;

