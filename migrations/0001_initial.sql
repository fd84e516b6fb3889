-- pybatch 0001: staging table, settings, flush log, flush() and disconnect().
-- Every object lives in schema "pybatch" and is schema-qualified; every function
-- pins search_path so a caller's objects can never shadow ours.
-- depends:

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
