-- ---------------------------------------------------------------------------
-- The hand-off: drain staging into pending, on any set of relations (the
-- tables here; one shard group of each on Citus).
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pybatch.drain_into(staging regclass, pending regclass, agents regclass, quarantine regclass,
                                   row_cap bigint, tolerance interval, lanes integer,
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
    IF lanes IS NULL OR lanes < 1 THEN
        RAISE EXCEPTION 'pybatch.flush: lanes must be 1 or more, not %', COALESCE(lanes::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
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
            -- One row per agent that has a row: its latest beat (ties: greater
            -- replica, NULL lowest), its earliest beat and its count. A row stands
            -- for its agent, so the one sort, by row, also leaves them in heap order.
            SELECT DISTINCT ON (wa.ctid)
                e.agent_id,
                wa.ctid AS row_at,
                e.replica_id,
                e.last_at,
                pg_catalog.min(e.first_at) OVER per_agent AS first_at,
                pg_catalog.sum(e.beats) OVER per_agent AS beats
            FROM events e
            JOIN %3$s wa ON wa.id = e.agent_id
            WINDOW per_agent AS (
                PARTITION BY wa.ctid
                ORDER BY e.last_at DESC, e.replica_id DESC NULLS LAST
                ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
            ORDER BY wa.ctid, e.last_at DESC, e.replica_id DESC NULLS LAST
        ),
        placed AS (
            -- Number each agent within its row's heap page: round k takes the k-th.
            -- Each page belongs to one lane (page mod lanes), and round k's pass of
            -- lane j is lanes * (k - 1) + j + 1, so no pass number holds two rows
            -- of one page and the passes of one round share no page: the lanes of
            -- a round can merge at once in their own sessions. One lane: pass k.
            -- (The planner sorts again by page; the rows come already in order,
            -- which its sort checks first, so that costs one comparison a row.)
            SELECT l.agent_id, l.first_at, l.last_at, l.replica_id, l.beats,
                   ((pg_catalog.row_number() OVER (
                       PARTITION BY (l.row_at::text::point)[0] ORDER BY l.row_at) - 1) * $4
                    + pg_catalog.mod(((l.row_at::text::point)[0])::bigint, $4) + 1)::integer AS pass_no,
                   EXISTS (SELECT FROM %4$s q
                           WHERE q.agent_id = l.agent_id AND q.retry_at > $3) AS held
            FROM latest l
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
            -- Agents with no row (never created, or deleted since): nothing to merge
            -- into. Counted by difference, with no second join with the table.
            ((SELECT pg_catalog.count(*) FROM drained d WHERE NOT d.is_future)
            + (SELECT COALESCE(pg_catalog.sum(c.beats), 0) FROM carried c)
            + (SELECT COALESCE(pg_catalog.sum(r.beats), 0) FROM retried r)
            - (SELECT COALESCE(pg_catalog.sum(l.beats), 0) FROM latest l))::bigint
        $q$, staging, pending, agents, quarantine)
    INTO rows_staged, future_heartbeats, unknown_heartbeats
    USING row_cap, tolerance, handoff_at, lanes::bigint;
    -- Only for the hand-off: the caller's transaction may go on (SELECT pybatch.flush()).
    PERFORM pg_catalog.set_config('enable_nestloop', previous_nestloop, true);
END
$fn$;
COMMENT ON FUNCTION pybatch.drain_into(regclass, regclass, regclass, regclass, bigint, interval, integer) IS
    'Internal: the hand-off of a flush on the given relations (staging, pending, agents, quarantine; a shard group on Citus). Drains at most row_cap staged rows into pending, one row per agent numbered by heap page, in lanes that share no page.';
