-- ---------------------------------------------------------------------------
-- One pass's merge of one agent's reduced beats into its row, on any set of
-- relations. The fold (LEAST/GREATEST) does not depend on order, so passes,
-- deferrals and retries change nothing.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pybatch.merge_pass_in(pending regclass, agents regclass, this_pass integer, only_agent uuid)
RETURNS TABLE (picked bigint, merged bigint, updated bigint, stale_beats bigint, newest_event_at timestamptz)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
-- A pass touches one row per page, so the planner would rather scan the whole
-- table than look rows up; the lookups are several times cheaper (they read
-- only the rows of this pass) and keep the cost of a pass to its own size.
SET enable_seqscan = off
-- With sequential scans off alone, the planner still preferred a full scan of
-- the primary key to thousands of ctid fetches once the table had grown past a
-- pass (100,000 index entries read per pass at 100k agents). Index scans off as
-- well leave a bitmap index scan (which prunes too) to the merge or the lock,
-- and the update after a lock a TID scan, so a pass costs its own rows.
-- Measured: docs/benchmarks.md.
SET enable_indexscan = off
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
    previous_timeout text := pg_catalog.current_setting('lock_timeout');
    -- The merge, written once; %3$s says how it finds the agents' rows.
    merge_sql text := $q$
    WITH done AS (
        DELETE FROM %1$s p
        WHERE p.ctid = ANY ($1) AND p.agent_id = ANY ($2)
        RETURNING p.agent_id, p.first_at, p.last_at, p.replica_id, p.beats
    ),
    changed AS (
        -- SET reads wa.* from the row version it updates (the latest committed
        -- one, rechecked if it changed meanwhile), so no disconnect is ever undone.
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
        WHERE %3$s
          AND wa.id = d.agent_id
          -- Only rows whose values change are rewritten (no dead tuple, no WAL otherwise).
          AND (wa.first_connected_at IS NULL OR d.first_at < wa.first_connected_at
               OR wa.last_connected_at IS NULL OR d.last_at > wa.last_connected_at
               OR (d.last_at = wa.last_connected_at
                   AND (d.replica_id > wa.last_connected_replica_id
                        OR (wa.last_connected_replica_id IS NULL AND d.replica_id IS NOT NULL)
                        OR wa.disconnected_at < d.last_at)))
        RETURNING d.last_at, d.beats
    ),
    totals AS (
        SELECT pg_catalog.count(*) AS changed_rows, COALESCE(pg_catalog.sum(c.beats), 0)::bigint AS changed_beats,
               pg_catalog.max(c.last_at) AS newest
        FROM changed c
    )
    -- Each pending row matches one agent row at most, so the beats of the rows
    -- not rewritten are the difference: no join of the two.
    SELECT m.changed_rows, (SELECT COALESCE(pg_catalog.sum(d.beats), 0)::bigint FROM done d) - m.changed_beats, m.newest
    FROM totals m
    $q$;
BEGIN
    EXECUTE pg_catalog.format($q$
        SELECT COALESCE(pg_catalog.array_agg(p.agent_id), '{}'), COALESCE(pg_catalog.array_agg(p.ctid), '{}')
        FROM %s p
        WHERE p.pass_no = $1 AND ($2::uuid IS NULL OR p.agent_id = $2)
        $q$, pending) INTO batch_ids, batch_rows USING this_pass, only_agent;
    picked := pg_catalog.cardinality(batch_ids);

    -- The usual case, no row held by anyone else: the merge alone, finding its
    -- rows through the primary key (a bitmap scan, which prunes each page on the
    -- way, so the update stays HOT). No lock step and no lock record: measured
    -- about a third less per row (docs/benchmarks.md). An app transaction that
    -- holds one of the rows makes it wait lock_timeout, 20 ms at most; then the
    -- pass is undone with its subtransaction and done the careful way below,
    -- which skips what is locked. (An agent deleted since the hand-off counts
    -- its beats as stale here, as unknown there: dropped either way.)
    IF only_agent IS NULL THEN
        BEGIN
            PERFORM pg_catalog.set_config('lock_timeout', '20ms', true);
            EXECUTE pg_catalog.format(merge_sql, pending, agents, 'wa.id = ANY ($2)')
                INTO updated, stale_beats, newest_event_at USING batch_rows, batch_ids;
            PERFORM pg_catalog.set_config('lock_timeout', previous_timeout, true);
            merged := picked;
            RETURN NEXT;
            RETURN;
        EXCEPTION WHEN lock_not_available THEN
            NULL;  -- a row is held: the careful way (the subtransaction undid the setting)
        END;
    END IF;

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

    -- The versions locked above, fetched by ctid (the lock walked the index).
    EXECUTE pg_catalog.format(merge_sql, pending, agents, 'wa.ctid = ANY ($3)')
        INTO updated, stale_beats, newest_event_at USING batch_rows, locked_ids, locked_ctids;
    RETURN NEXT;
END
$fn$;
COMMENT ON FUNCTION pybatch.merge_pass_in(regclass, regclass, integer, uuid) IS
    'Internal: merges the pending rows of one pass (or one agent of it) into the agents relation, skipping rows locked by others. Runs with its caller''s rights.';
