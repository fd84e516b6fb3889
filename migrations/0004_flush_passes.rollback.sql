-- Undo 0004: back to 0003's one-statement flush. Pending rows go back to staging
-- (one row per agent keeps its latest and earliest beat); quarantined ones too.
INSERT INTO pybatch.heartbeats (agent_id, replica_id, beat_at)
SELECT p.agent_id, p.replica_id, p.last_at FROM pybatch.pending p
UNION ALL SELECT p.agent_id, NULL, p.first_at FROM pybatch.pending p WHERE p.first_at < p.last_at
UNION ALL SELECT q.agent_id, q.replica_id, q.last_at FROM pybatch.quarantine q
UNION ALL SELECT q.agent_id, NULL, q.first_at FROM pybatch.quarantine q WHERE q.first_at < q.last_at;
DROP FUNCTION pybatch.align_owner();
DROP FUNCTION pybatch.scheduler_release();
DROP FUNCTION pybatch.scheduler_claim(text, interval);
DROP TABLE pybatch.scheduler_lease;
DROP PROCEDURE pybatch.flush_loop(interval, timestamptz);
DROP FUNCTION pybatch.flush_loop_next(pybatch.flush_result, interval, timestamptz, timestamptz);
DROP PROCEDURE pybatch.flush_in_passes(bigint, interval, pybatch.flush_result);
DROP FUNCTION pybatch.flush(bigint, interval);
DROP FUNCTION pybatch.disconnect(uuid, timestamptz);
DROP FUNCTION pybatch.requeue_quarantined(uuid);
DROP FUNCTION pybatch.flush_finish(pybatch.flush_result);
DROP FUNCTION pybatch.flush_pass(pybatch.flush_result);
DROP FUNCTION pybatch.flush_begin(bigint, interval);
DROP FUNCTION pybatch.flush_distributed(bigint, interval);
DROP FUNCTION pybatch.flush_tidy();
DROP FUNCTION pybatch.empty_result();
DROP FUNCTION pybatch.next_pass_in(pybatch.flush_result, regclass, regclass, regclass);
DROP FUNCTION pybatch.merge_pass_in(regclass, regclass, integer, uuid);
DROP FUNCTION pybatch.drain_into(regclass, regclass, regclass, regclass, bigint, interval);
DROP VIEW pybatch.flush_lock_holders;
DROP FUNCTION pybatch.flush_take_lock(interval);
DROP TABLE pybatch.quarantine;
DROP TABLE pybatch.pending;
DROP TABLE pybatch.flush_lock;
ALTER TYPE pybatch.flush_result
    DROP ATTRIBUTE passes, DROP ATTRIBUTE hot_updates, DROP ATTRIBUTE deferred_agents,
    DROP ATTRIBUTE quarantined_agents, DROP ATTRIBUTE newest_event_at;
ALTER TABLE pybatch.flush_log
    DROP COLUMN passes, DROP COLUMN hot_updates, DROP COLUMN deferred_agents,
    DROP COLUMN quarantined_agents, DROP COLUMN newest_event_at, DROP COLUMN heap_bytes,
    DROP COLUMN index_bytes;
ALTER TABLE pybatch.settings
    ALTER COLUMN flush_interval SET DEFAULT interval '10 seconds',
    DROP CONSTRAINT settings_flush_interval_range,
    DROP CONSTRAINT settings_inactive_timeout_range,
    DROP CONSTRAINT settings_future_tolerance_range,
    DROP CONSTRAINT settings_history_retention_range,
    DROP CONSTRAINT settings_max_rows_per_flush_range,
    ADD CONSTRAINT settings_flush_interval_check CHECK (flush_interval > interval '0'),
    ADD CONSTRAINT settings_inactive_timeout_check CHECK (inactive_timeout > interval '0'),
    ADD CONSTRAINT settings_future_tolerance_check CHECK (future_tolerance >= interval '0'),
    ADD CONSTRAINT settings_history_retention_check CHECK (history_retention > interval '0'),
    ADD CONSTRAINT settings_max_rows_per_flush_check CHECK (max_rows_per_flush > 0);

-- 0001's and 0002's routines, restored verbatim (copied from those files).
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

REVOKE EXECUTE ON FUNCTION pybatch.flush(bigint, interval) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pybatch.disconnect(uuid, timestamptz) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pybatch.flush_loop_pass(interval, timestamptz) FROM PUBLIC;
REVOKE EXECUTE ON PROCEDURE pybatch.flush_loop(interval, timestamptz) FROM PUBLIC;
