-- pybatch 0001: the baseline. State only: the schema, its tables, types,
-- columns, constraints, indexes and their comments, and the target table when
-- absent. Every function, procedure and view has its own source file under
-- sql/ (sql/routines/, sql/views/), which `pybatch migrate` applies after the
-- versioned migrations and re-applies whenever it changes. A later change of
-- state is a new migration NNNN_name.sql with its NNNN_name.rollback.sql.
-- Every name is schema-qualified: yoyo runs this with search_path set to its
-- bookkeeping schema.
-- depends:

CREATE SCHEMA pybatch;
COMMENT ON SCHEMA pybatch IS
    'pybatch: heartbeats are staged in pybatch.heartbeats and merged into public.workspace_agents by CALL pybatch.flush_in_passes().';

-- ---------------------------------------------------------------------------
-- Settings: one row, typed columns, readable from psql. The ranges are what a
-- flush can live with (a huge retention once overflowed the purge).
-- ---------------------------------------------------------------------------
CREATE TABLE pybatch.settings (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    flush_interval interval NOT NULL DEFAULT interval '5 seconds',
    inactive_timeout interval NOT NULL DEFAULT '30 seconds',
    future_tolerance interval NOT NULL DEFAULT '5 seconds',
    history_retention interval NOT NULL DEFAULT '7 days',
    max_rows_per_flush bigint DEFAULT 1000000,
    created_workspace_agents boolean NOT NULL DEFAULT false,
    heartbeat_period interval NOT NULL DEFAULT interval '15 seconds',
    client_write_interval interval NOT NULL DEFAULT interval '1 second',
    CONSTRAINT settings_flush_interval_range
        CHECK (flush_interval BETWEEN interval '100 milliseconds' AND interval '1 hour'),
    CONSTRAINT settings_inactive_timeout_range
        CHECK (inactive_timeout BETWEEN interval '1 second' AND interval '1 day'),
    CONSTRAINT settings_future_tolerance_range
        CHECK (future_tolerance BETWEEN interval '0' AND interval '1 hour'),
    CONSTRAINT settings_history_retention_range
        CHECK (history_retention BETWEEN interval '1 minute' AND interval '3650 days'),
    CONSTRAINT settings_max_rows_per_flush_range
        CHECK (max_rows_per_flush BETWEEN 1 AND 1000000000),
    CONSTRAINT settings_heartbeat_period_range
        CHECK (heartbeat_period BETWEEN interval '1 second' AND interval '1 hour'),
    CONSTRAINT settings_client_write_interval_range
        CHECK (client_write_interval BETWEEN interval '0' AND interval '1 hour')
);
INSERT INTO pybatch.settings DEFAULT VALUES;
COMMENT ON TABLE pybatch.settings IS
    'pybatch settings, one row. Change with `pybatch config set KEY VALUE` or UPDATE.';
COMMENT ON COLUMN pybatch.settings.flush_interval IS
    'How often the scheduler (pg_cron or `pybatch scheduler`) flushes; health checks use it to judge lateness. 100 ms to 1 h; keep heartbeat period + flush interval + flush time under inactive_timeout.';
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
COMMENT ON COLUMN pybatch.settings.heartbeat_period IS
    'How often each agent''s heartbeat is written (Coder: AgentConnectionUpdateFrequency, 15 s). 1 s to 1 h. Part of the staleness budget (pybatch.staleness_budget()).';
COMMENT ON COLUMN pybatch.settings.client_write_interval IS
    'How long a beat may wait in a client before it reaches staging (HeartbeatClient write_interval, 1 s by default; 0 for immediate mode). 0 to 1 h. Part of the staleness budget.';
GRANT SELECT ON pybatch.settings TO pg_monitor;  -- the yardsticks the views use

-- ---------------------------------------------------------------------------
-- The target table. A real deployment already has it (Coder's, with many more
-- columns); create it only when absent and remember that we did. `pybatch
-- migrate` checks a table it finds before it applies anything.
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

-- ---------------------------------------------------------------------------
-- Staging. UNLOGGED: no WAL per heartbeat; emptied by a crash or a failover
-- (docs/design.md says what that costs and how the client covers it).
-- No index, no trigger, no foreign key: the insert path stays as cheap as it can be.
-- The hand-off drains it with DELETE ... RETURNING, which leaves dead tuples, so
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
-- Flush history, and what one flush returns.
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
    error text,
    passes integer NOT NULL DEFAULT 0,
    hot_updates bigint NOT NULL DEFAULT 0,
    deferred_agents bigint NOT NULL DEFAULT 0,
    quarantined_agents bigint NOT NULL DEFAULT 0,
    newest_event_at timestamptz,
    heap_bytes bigint,
    index_bytes bigint
);
CREATE INDEX flush_log_started_at_idx ON pybatch.flush_log (started_at);
COMMENT ON TABLE pybatch.flush_log IS
    'One row per flush() that ran (skipped calls are not logged). error is set when the flush failed and was rolled back.';
COMMENT ON INDEX pybatch.flush_log_started_at_idx IS 'Serves the retention purge.';
COMMENT ON COLUMN pybatch.flush_log.passes IS 'Committed passes the merge took (at most one row per heap page each).';
COMMENT ON COLUMN pybatch.flush_log.hot_updates IS 'Of agents_updated, how many were HOT (no index entry, page-local).';
COMMENT ON COLUMN pybatch.flush_log.deferred_agents IS 'Agents whose row another transaction held locked: left pending for the next flush.';
COMMENT ON COLUMN pybatch.flush_log.quarantined_agents IS 'Agents whose merge failed alone and went to pybatch.quarantine.';
COMMENT ON COLUMN pybatch.flush_log.newest_event_at IS 'Newest beat_at the flush applied.';
COMMENT ON COLUMN pybatch.flush_log.heap_bytes IS 'Size of public.workspace_agents (heap) after the flush: growth means non-HOT updates.';
COMMENT ON COLUMN pybatch.flush_log.index_bytes IS 'Size of its indexes after the flush.';

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
    error text,
    passes integer,
    hot_updates bigint,
    deferred_agents bigint,
    quarantined_agents bigint,
    newest_event_at timestamptz
);
COMMENT ON TYPE pybatch.flush_result IS
    'What one flush did. skipped: another flush held pybatch.flush_lock past lock_wait. error: what failed; nothing it had not merged was lost (staging or pybatch.pending keep it).';

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
-- per agent (earliest beat, latest beat with its replica, count). UNLOGGED like
-- staging: a crash empties it.
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

-- ---------------------------------------------------------------------------
-- Citus: per-shard figures of a flush (flush_log keeps the totals), and what a
-- worker sends back for one shard group. Empty and unused on plain PostgreSQL.
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
GRANT SELECT ON pybatch.flush_log_shards TO pg_monitor;

CREATE TYPE pybatch.shard_flush_result AS (
    result pybatch.flush_result,
    heap_bytes bigint,
    index_bytes bigint
);
COMMENT ON TYPE pybatch.shard_flush_result IS
    'Internal (Citus): what pybatch.shard_flush() returns to the coordinator for one shard group.';

-- ---------------------------------------------------------------------------
-- Which routine sources `pybatch migrate` applied: one row per file of sql/,
-- with the checksum of its text and a fingerprint of the catalog object it
-- made. A file whose text changed, or whose object was altered or dropped
-- since, is applied again by the next migrate.
-- ---------------------------------------------------------------------------
CREATE TABLE pybatch.routine_sources (
    source text PRIMARY KEY,
    object text NOT NULL,
    source_sha256 text NOT NULL,
    catalog_md5 text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE pybatch.routine_sources IS
    'Kept by `pybatch migrate`: each routine or view source file (source, relative to sql/), the object it defines, the checksum of the text applied and a fingerprint of the object as applied. `pybatch migrate --status` lists those out of date.';
GRANT SELECT ON pybatch.routine_sources TO pg_monitor;

-- Monitoring access: pg_monitor reads the views (they run with the owner's
-- rights on tables; the functions they call grant pg_monitor EXECUTE).
GRANT USAGE ON SCHEMA pybatch TO pg_monitor;
REVOKE ALL ON pybatch.flush_lock, pybatch.pending, pybatch.quarantine, pybatch.scheduler_lease FROM PUBLIC;
REVOKE ALL ON pybatch.flush_log_shards FROM PUBLIC;
