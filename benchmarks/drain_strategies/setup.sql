-- Objects for benchmarks/drain_strategies.py, in their own schema so the run
-- can drop them without touching pybatch. Recreated at the start of each run.
DROP SCHEMA IF EXISTS drain_bench CASCADE;
CREATE SCHEMA drain_bench;
COMMENT ON SCHEMA drain_bench IS 'Scratch objects of benchmarks/drain_strategies.py (safe to drop).';

-- ---------------------------------------------------------------------------
-- The merge shared by lock_truncate, truncate_unlocked and rotation is pybatch's
-- own, never a copy of it: the rows go to pybatch.heartbeats (when they are not
-- there already) and SELECT pybatch.flush() merges them, in the caller's
-- transaction (its single-transaction form: these drains lock and truncate around
-- the merge, so they need it inside their own transaction). A change to the merge
-- in a migration is measured here at once. Returns the rows merged from source.
-- (delete_returning, in drain_strategies.py, calls pybatch's default path:
-- CALL pybatch.flush_in_passes() through pybatch.flush.flush().)
-- ---------------------------------------------------------------------------
CREATE FUNCTION drain_bench.merge_from(source regclass) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    result pybatch.flush_result;
BEGIN
    IF source <> 'pybatch.heartbeats'::regclass THEN
        -- Rotation's writers never write pybatch.heartbeats: it holds only these rows.
        EXECUTE pg_catalog.format(
            'INSERT INTO pybatch.heartbeats (agent_id, replica_id, beat_at) '
            'SELECT s.agent_id, s.replica_id, s.beat_at FROM %s s', source);
    END IF;
    SELECT * INTO STRICT result FROM pybatch.flush();
    IF result.skipped OR result.error IS NOT NULL THEN
        RAISE EXCEPTION 'drain_bench: pybatch.flush() did not merge: %', COALESCE(result.error, 'skipped');
    END IF;
    RETURN result.rows_staged;
END
$fn$;
COMMENT ON FUNCTION drain_bench.merge_from(regclass) IS
    'Merges every row of a staging table into public.workspace_agents with pybatch.flush() itself; returns rows merged.';

-- ---------------------------------------------------------------------------
-- merge, then TRUNCATE. With lock_first (strategy lock_truncate) staging is
-- locked first, so every committed row is seen by the merge and no insert can
-- commit between the merge's snapshot and TRUNCATE: lossless, but every writer
-- waits for the whole merge. Without it (truncate_unlocked, the known-wrong
-- variant that loses rows, run only on request to show the loss check can fail)
-- rows committed after the merge's snapshot and before TRUNCATE are wiped.
-- ---------------------------------------------------------------------------
CREATE FUNCTION drain_bench.flush_truncate(lock_first boolean) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    rows_read bigint;
BEGIN
    IF lock_first THEN
        LOCK TABLE pybatch.heartbeats IN ACCESS EXCLUSIVE MODE;
    END IF;
    rows_read := drain_bench.merge_from('pybatch.heartbeats');
    TRUNCATE pybatch.heartbeats;
    RETURN rows_read;
END
$fn$;
COMMENT ON FUNCTION drain_bench.flush_truncate(boolean) IS
    'Drain strategies lock_truncate (lock_first) and truncate_unlocked (UNSAFE, loses rows): merge, then TRUNCATE.';

-- ---------------------------------------------------------------------------
-- rotation: staging is list-partitioned by slot = generation % 2. Writers
-- insert into the parent without naming slot; its default reads the current
-- generation. A flush
--   1. bumps the generation and COMMITS: every INSERT whose statement snapshot
--      is taken after that commit routes to the other partition;
--   2. LOCKs the old partition ACCESS EXCLUSIVE. An INSERT that still routed
--      to the old slot (snapshot taken before the bump) holds ROW EXCLUSIVE on
--      that partition from routing until its commit, so the LOCK waits only
--      for those few in-flight inserts; new inserts go to the other partition
--      and never wait. Before the LOCK, the flush waits (bounded) for the client
--      transactions that were running at the switch to end: a late one that
--      routed to the old slot after the LOCK was queued would otherwise wait
--      behind it for the whole merge. That wait only avoids queueing; the LOCK
--      alone is what makes the drain lossless;
--   3. merges the old partition with a snapshot taken after the LOCK, so it
--      sees every row committed there, then TRUNCATEs it and commits.
-- Why no row is lost: a row in the old partition either committed before the
-- LOCK was granted (seen by the merge, then truncated) or its INSERT routed
-- there late and waited for our lock; it then writes into the new, empty
-- file after our commit and stays there until that slot is drained again two
-- flushes later. TRUNCATE never removes a row the merge did not read.
-- ---------------------------------------------------------------------------
CREATE TABLE drain_bench.generation (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    generation bigint NOT NULL DEFAULT 0
);
INSERT INTO drain_bench.generation DEFAULT VALUES;
COMMENT ON TABLE drain_bench.generation IS 'Rotation: the current generation; writers insert into slot generation % 2.';

CREATE FUNCTION drain_bench.current_slot() RETURNS smallint
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT (g.generation % 2)::smallint FROM drain_bench.generation g $fn$;
COMMENT ON FUNCTION drain_bench.current_slot() IS 'Rotation: the partition that new heartbeats go to.';

CREATE TABLE drain_bench.staging (
    agent_id uuid NOT NULL,
    replica_id uuid,
    beat_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    slot smallint NOT NULL DEFAULT drain_bench.current_slot()
) PARTITION BY LIST (slot);
COMMENT ON TABLE drain_bench.staging IS
    'Rotation staging: INSERT (agent_id, replica_id, beat_at) like pybatch.heartbeats; slot is filled in.';
CREATE UNLOGGED TABLE drain_bench.staging_0 PARTITION OF drain_bench.staging FOR VALUES IN (0);
CREATE UNLOGGED TABLE drain_bench.staging_1 PARTITION OF drain_bench.staging FOR VALUES IN (1);
COMMENT ON TABLE drain_bench.staging_0 IS 'Rotation partition for even generations.';
COMMENT ON TABLE drain_bench.staging_1 IS 'Rotation partition for odd generations.';

-- A procedure, so it can COMMIT between the bump and the drain (one CALL; also
-- what pg_cron 1.4 can run). Call it outside an explicit transaction. No SET
-- search_path clause: a procedure with SET cannot COMMIT, so every name is qualified.
CREATE PROCEDURE drain_bench.flush_rotation(INOUT rows_read bigint DEFAULT NULL)
LANGUAGE plpgsql
AS $fn$
DECLARE
    old_slot smallint;
    old_partition regclass;
    running text[];
    give_up_at timestamptz;
BEGIN
    UPDATE drain_bench.generation g SET generation = g.generation OPERATOR(pg_catalog.+) 1
    RETURNING ((g.generation OPERATOR(pg_catalog.-) 1) OPERATOR(pg_catalog.%) 2)::smallint INTO old_slot;
    COMMIT;  -- new inserts now route to the other partition
    SELECT pg_catalog.array_agg(l.virtualxid) INTO running
    FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a ON a.pid OPERATOR(pg_catalog.=) l.pid
    WHERE l.locktype OPERATOR(pg_catalog.=) 'virtualxid' AND l.granted
      AND a.backend_type OPERATOR(pg_catalog.=) 'client backend'
      AND l.pid OPERATOR(pg_catalog.<>) pg_catalog.pg_backend_pid();
    give_up_at := pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) interval '1 second';
    WHILE pg_catalog.clock_timestamp() OPERATOR(pg_catalog.<) give_up_at AND EXISTS (
        SELECT FROM pg_catalog.pg_locks l
        WHERE l.locktype OPERATOR(pg_catalog.=) 'virtualxid' AND l.granted
          AND l.virtualxid OPERATOR(pg_catalog.=) ANY (running)) LOOP
        PERFORM pg_catalog.pg_sleep(0.001);
    END LOOP;
    old_partition := pg_catalog.format('drain_bench.staging_%s', old_slot)::regclass;
    EXECUTE pg_catalog.format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', old_partition);
    rows_read := drain_bench.merge_from(old_partition);
    EXECUTE pg_catalog.format('TRUNCATE %s', old_partition);
END
$fn$;
COMMENT ON PROCEDURE drain_bench.flush_rotation(bigint) IS
    'Drain strategy rotation: bump generation, commit, wait for older transactions, lock the old partition, merge it, truncate it.';

-- ---------------------------------------------------------------------------
-- reset: the same starting point for every strategy: n fresh agents, empty
-- staging (both kinds), empty flush log, generation 0. Returns the agent ids.
-- ---------------------------------------------------------------------------
CREATE FUNCTION drain_bench.reset(agents integer) RETURNS SETOF uuid
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    TRUNCATE public.workspace_agents, pybatch.heartbeats, pybatch.pending, pybatch.flush_log, drain_bench.staging;
    UPDATE drain_bench.generation SET generation = 0;
    RETURN QUERY
        INSERT INTO public.workspace_agents (id)
        SELECT pg_catalog.gen_random_uuid() FROM pg_catalog.generate_series(1, agents)
        RETURNING id;
END
$fn$;
COMMENT ON FUNCTION drain_bench.reset(integer) IS
    'Benchmark reset: empties workspace_agents and staging, inserts n agents, returns their ids.';
