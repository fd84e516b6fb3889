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
-- depends: 0003_inspect

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
