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

