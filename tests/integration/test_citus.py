"""pybatch on Citus: a coordinator and 2 workers, public.workspace_agents distributed by id.

The issue's acceptance test: 20,000 agents; 4 writer threads (INSERT, COPY, a buffered
HeartbeatClient, COPY) with disconnects; 2 flushers at once. Every agent ends as the reference
model says, staging and pending end empty, nothing is lost. Also: what the coordinator sends to
the workers during a flush (no heartbeat row comes back), the layout, and shard isolation.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from pybatch.client import HeartbeatClient
from pybatch.flush import flush
from tests.citus_fixtures import citus_cluster, citus_dsn, staged  # noqa: F401 (fixtures)
from tests.helpers import connected
from tests.model import AgentState, Beat, Disconnect, actual_states, expected_states

pytestmark = pytest.mark.citus

AGENTS = 20_000
ROUNDS = 8
BATCH = 1_500
T0 = datetime(2026, 1, 1, tzinfo=UTC)
TIMES = [T0 + timedelta(seconds=s) for s in range(600)]
REPLICAS: list[uuid.UUID | None] = [None, uuid.UUID(int=1), uuid.UUID(int=2)]


def test_layout_is_colocated_by_agent_id(citus_dsn: str) -> None:  # noqa: F811
    with psycopg.connect(citus_dsn, autocommit=True) as conn:
        rows = conn.execute("""
            SELECT logicalrelid::text, column_to_column_name(logicalrelid, partkey), colocationid
            FROM pg_dist_partition
            WHERE logicalrelid IN ('public.workspace_agents'::regclass, 'pybatch.heartbeats'::regclass,
                                   'pybatch.pending'::regclass, 'pybatch.quarantine'::regclass)
            ORDER BY 1""").fetchall()
        assert {r[0]: r[1] for r in rows} == {
            "workspace_agents": "id",
            "pybatch.heartbeats": "agent_id",
            "pybatch.pending": "agent_id",
            "pybatch.quarantine": "agent_id",
        }
        assert len({r[2] for r in rows}) == 1
        # flush_log and settings stay on the coordinator (local tables).
        local = conn.execute(
            "SELECT count(*) FROM pg_dist_partition WHERE logicalrelid IN"
            " ('pybatch.flush_log'::regclass, 'pybatch.settings'::regclass)"
        ).fetchone()
        assert local == (0,)
        assert conn.execute("SELECT pybatch.citus_distributed()").fetchone() == (True,)


def test_disconnect_is_a_single_shard_router_query(citus_dsn: str) -> None:  # noqa: F811
    with psycopg.connect(citus_dsn, autocommit=True) as conn:
        agent = uuid.uuid4()
        conn.execute("INSERT INTO public.workspace_agents (id) VALUES (%s)", (agent,))
        plan = "\n".join(
            r[0]
            for r in conn.execute(
                "EXPLAIN UPDATE public.workspace_agents SET disconnected_at = %s WHERE id = %s", (T0, agent)
            ).fetchall()
        )
        assert "Task Count: 1" in plan, plan
        assert conn.execute("SELECT pybatch.disconnect(%s, %s)", (agent, T0)).fetchone() == (True,)


def test_flush_sends_only_calls_and_no_row_comes_back(citus_dsn: str) -> None:  # noqa: F811
    """What crosses between coordinator and workers during a flush: Citus logs every command it
    sends (citus.log_remote_commands); each is a CALL of pybatch.shard_flush naming one shard group,
    and what comes back per group is one composite of counts. The drain's DELETEs run on the
    workers: their staging shards' counters show them, the coordinator's shell shows none."""
    with psycopg.connect(citus_dsn, autocommit=True) as conn:
        agents = [uuid.uuid4() for _ in range(2_000)]
        conn.execute("INSERT INTO public.workspace_agents (id) SELECT unnest(%s::uuid[])", (agents,))
        conn.execute("INSERT INTO pybatch.heartbeats (agent_id, beat_at) SELECT unnest(%s::uuid[]), %s", (agents, T0))
        notices: list[str] = []
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        conn.execute("SET citus.log_remote_commands = on")
        conn.execute("SET client_min_messages = log")
        result = flush(conn)
        conn.execute("RESET client_min_messages")
        conn.execute("RESET citus.log_remote_commands")
        assert result.ok and result.rows_staged == 2_000 and result.agents_updated == 2_000
        sent = [n.removeprefix("issuing ") for n in notices if n.startswith("issuing ")]
        calls = [s for s in sent if s.startswith("CALL pybatch.shard_flush(")]
        groups = conn.execute(
            "SELECT count(*) FROM pg_dist_shard WHERE logicalrelid = 'pybatch.heartbeats'::regclass"
        ).fetchone()
        assert groups is not None and len(calls) == groups[0], notices[:20]
        assert [s for s in sent if not s.startswith(("CALL pybatch.shard_flush(", "SET application_name"))] == []
        shards = conn.execute(
            "SELECT count(*), sum(rows_staged) FROM pybatch.flush_log_shards WHERE flush_id = %s", (result.flush_id,)
        ).fetchone()
        assert shards == (groups[0], 2_000)
        # The coordinator's shell of staging never held or deleted a row.
        conn.execute("SELECT pg_stat_force_next_flush()")
        shell = conn.execute(
            "SELECT n_tup_ins, n_tup_del FROM pg_stat_user_tables WHERE relid = 'pybatch.heartbeats'::regclass"
        ).fetchone()
        assert shell == (0, 0)
        assert staged(conn) == (0, 0)


def test_a_failing_shard_keeps_its_rows_and_others_merge(citus_dsn: str) -> None:  # noqa: F811
    with psycopg.connect(citus_dsn, autocommit=True) as conn:
        agents = [uuid.uuid4() for _ in range(400)]
        conn.execute("INSERT INTO public.workspace_agents (id) SELECT unnest(%s::uuid[])", (agents,))
        # Break one shard group: its pending shard loses a column the merge needs.
        shard = conn.execute("""
            SELECT shard_name('pybatch.pending'::regclass, s.shardid), n.nodeport, s.shardid
            FROM pg_dist_shard s JOIN pg_dist_placement p USING (shardid)
            JOIN pg_dist_node n USING (groupid)
            WHERE s.logicalrelid = 'pybatch.pending'::regclass ORDER BY s.shardid LIMIT 1""").fetchone()
        assert shard is not None
        worker = conn.info.dsn.replace(f"port={conn.info.port}", f"port={shard[1]}")
        with psycopg.connect(worker, autocommit=True) as w:
            w.execute("SET citus.enable_manual_changes_to_shards = on")
            w.execute(f"ALTER TABLE {shard[0]} RENAME COLUMN beats TO broken")
        conn.execute("INSERT INTO pybatch.heartbeats (agent_id, beat_at) SELECT unnest(%s::uuid[]), %s", (agents, T0))
        result = flush(conn)
        assert result.error is not None and "1 of" in result.error
        left, _ = staged(conn)
        assert 0 < left < 400  # the broken group kept its rows in staging
        merged = conn.execute(
            "SELECT count(*) FROM public.workspace_agents WHERE last_connected_at IS NOT NULL"
        ).fetchone()
        assert merged == (400 - left,)
        with psycopg.connect(worker, autocommit=True) as w:
            w.execute("SET citus.enable_manual_changes_to_shards = on")
            w.execute(f"ALTER TABLE {shard[0]} RENAME COLUMN broken TO beats")
        assert flush(conn).ok
        assert staged(conn) == (0, 0)
        assert conn.execute(
            "SELECT count(*) FROM public.workspace_agents WHERE last_connected_at = %s", (T0,)
        ).fetchone() == (400,)


def test_acceptance_20k_agents_4_writers_2_flushers(citus_dsn: str) -> None:  # noqa: F811
    dsn = citus_dsn
    agents = [uuid.uuid4() for _ in range(AGENTS)]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO public.workspace_agents (id, created_at) SELECT unnest(%s::uuid[]), %s",
            (agents, T0 - timedelta(days=1)),
        )
    events: list[list[Beat | Disconnect]] = [[] for _ in range(4)]
    errors: list[BaseException] = []
    stop = threading.Event()
    flushes = {"ok": 0, "skipped": 0, "failed": 0, "rows": 0}
    lock = threading.Lock()
    client_rows = [0]

    def picks(rng: random.Random) -> list[Beat]:
        return [
            Beat(
                agents[rng.randrange(AGENTS)], TIMES[rng.randrange(len(TIMES))], REPLICAS[rng.randrange(len(REPLICAS))]
            )
            for _ in range(BATCH)
        ]

    def disconnects(c: psycopg.Connection, rng: random.Random, mine: list[Beat | Disconnect]) -> None:
        for _ in range(20):
            d = Disconnect(agents[rng.randrange(AGENTS)], TIMES[rng.randrange(len(TIMES))])
            c.execute("SELECT pybatch.disconnect(%s, %s)", (d.agent_id, d.at))
            mine.append(d)

    def inserter() -> None:
        rng, mine = random.Random(0), events[0]
        try:
            with psycopg.connect(dsn, autocommit=True) as c:
                for _ in range(ROUNDS):
                    batch = picks(rng)
                    c.execute(
                        "INSERT INTO pybatch.heartbeats (agent_id, replica_id, beat_at)"
                        " SELECT * FROM unnest(%s::uuid[], %s::uuid[], %s::timestamptz[])",
                        ([b.agent_id for b in batch], [b.replica_id for b in batch], [b.at for b in batch]),
                    )
                    mine.extend(batch)
                    disconnects(c, rng, mine)
                    time.sleep(0.15)  # spread the writes over many flushes
        except BaseException as exc:
            errors.append(exc)

    def copier(index: int) -> None:
        rng, mine = random.Random(index), events[index]
        try:
            with psycopg.connect(dsn, autocommit=True) as c:
                for _ in range(ROUNDS):
                    batch = picks(rng)
                    with (
                        c.cursor() as cur,
                        cur.copy("COPY pybatch.heartbeats (agent_id, replica_id, beat_at) FROM STDIN") as cp,
                    ):
                        for b in batch:
                            cp.write_row((b.agent_id, b.replica_id, b.at))
                    mine.extend(batch)
                    disconnects(c, rng, mine)
                    time.sleep(0.15)  # spread the writes over many flushes
        except BaseException as exc:
            errors.append(exc)

    def client_writer() -> None:
        rng, mine = random.Random(2), events[2]
        # Each agent at most once from this client: its buffer keeps one beat per agent per write
        # (the latest), which the model would have to mimic otherwise.
        order = rng.sample(agents, ROUNDS * BATCH)
        try:
            client = HeartbeatClient(dsn, mode="buffered", write_interval="0.2s")
            try:
                for round_no in range(ROUNDS):
                    batch = [
                        Beat(a, TIMES[rng.randrange(len(TIMES))], REPLICAS[rng.randrange(len(REPLICAS))])
                        for a in order[round_no * BATCH : (round_no + 1) * BATCH]
                    ]
                    for b in batch:
                        client.beat(b.agent_id, replica_id=b.replica_id, at=b.at)
                    mine.extend(batch)
                    for _ in range(20):
                        d = Disconnect(agents[rng.randrange(AGENTS)], TIMES[rng.randrange(len(TIMES))])
                        client.disconnect(d.agent_id, at=d.at)
                        mine.append(d)
                    time.sleep(0.1)
            finally:
                client.close()
                client_rows[0] = client.stats.rows_written
        except BaseException as exc:
            errors.append(exc)

    def flusher() -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as c:
                while not stop.wait(0.2):
                    result = flush(c, lock_wait=0.0)
                    with lock:
                        key = "skipped" if result.skipped else "failed" if result.error else "ok"
                        flushes[key] += 1
                        flushes["rows"] += result.rows_staged or 0
        except BaseException as exc:
            errors.append(exc)

    writers = [
        threading.Thread(target=inserter),
        threading.Thread(target=copier, args=(1,)),
        threading.Thread(target=client_writer),
        threading.Thread(target=copier, args=(3,)),
    ]
    flushers = [threading.Thread(target=flusher) for _ in range(2)]
    started = time.monotonic()
    for thread in [*flushers, *writers]:
        thread.start()
    for thread in writers:
        thread.join()
    stop.set()
    for thread in flushers:
        thread.join()
    with psycopg.connect(dsn, autocommit=True) as conn:
        while sum(staged(conn)):
            final = flush(conn)
            assert final.error is None, final.error
            flushes["rows"] += final.rows_staged or 0
        assert errors == []
        all_events = [e for mine in events for e in mine]
        beats = sum(isinstance(e, Beat) for e in all_events)
        assert beats == 4 * ROUNDS * BATCH
        # The buffered client writes one row per agent per write (rows_written), not one per beat.
        rows = beats - sum(isinstance(e, Beat) for e in events[2]) + client_rows[0]
        assert flushes["failed"] == 0 and flushes["rows"] == rows
        expected = expected_states(all_events)
        actual = actual_states(conn, agents)
        wrong = [a for a in agents if actual[a] != expected.get(a, AgentState())]
        assert wrong == [], [(actual[a], expected.get(a)) for a in wrong[:3]]
        assert staged(conn) == (0, 0)
        totals = conn.execute("SELECT sum(rows_staged) FROM pybatch.flush_log").fetchone()
        per_shard = conn.execute("SELECT sum(rows_staged) FROM pybatch.flush_log_shards").fetchone()
        assert totals == per_shard == (rows,)
    print(
        f"\ncitus acceptance: {beats:,} beats + {len(all_events) - beats:,} disconnects to {AGENTS:,} agents,"
        f" {flushes['ok']} flushes ({flushes['skipped']} skipped) in {time.monotonic() - started:.1f}s; wrong 0"
    )


def test_routines_reach_the_workers_and_rolling_back_the_baseline_removes_everything(
    citus_dsn: str,  # noqa: F811
) -> None:
    from pybatch import migrate

    with psycopg.connect(citus_dsn, autocommit=True) as conn:
        agent = uuid.uuid4()
        conn.execute("INSERT INTO public.workspace_agents (id) VALUES (%s)", (agent,))
        conn.execute("INSERT INTO pybatch.heartbeats (agent_id, beat_at) VALUES (%s, %s)", (agent, T0))
        # merge_pass_in()'s SET clauses (sql/routines/flush/merge_pass_in.sql) reached each worker's copy.
        configs = conn.execute(
            "SELECT result FROM run_command_on_workers($$SELECT proconfig::text FROM pg_proc "
            "WHERE oid = 'pybatch.merge_pass_in(regclass, regclass, integer, uuid)'::regprocedure$$)"
        ).fetchall()
        assert configs and all("enable_indexscan=off" in str(c[0]) for c in configs), configs
    while (rolled := connected(citus_dsn, migrate.rollback)) != "0002_pending_failed_error":
        assert rolled is not None and rolled > "0002", rolled  # each later migration, newest first
    with psycopg.connect(citus_dsn, autocommit=True) as conn:
        shards = conn.execute(
            "SELECT result FROM run_command_on_workers($$SELECT count(*) FROM pg_attribute a JOIN pg_class c"
            " ON c.oid = a.attrelid WHERE c.relname LIKE 'pending%' AND a.attname = 'failed_error'$$)"
        ).fetchall()
        assert shards and all(str(r[0]) == "0" for r in shards), shards
    assert connected(citus_dsn, migrate.rollback) == "0001_baseline"
    with psycopg.connect(citus_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT to_regnamespace('pybatch')").fetchone() == (None,)
        on_workers = conn.execute(
            "SELECT result FROM run_command_on_workers($$SELECT count(*) FROM pg_namespace WHERE nspname = 'pybatch'$$)"
        ).fetchall()
        assert on_workers and all(str(r[0]) == "0" for r in on_workers), on_workers
    # And installs again, distributed.
    connected(citus_dsn, migrate.apply)
    with psycopg.connect(citus_dsn, autocommit=True) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_dist_partition WHERE logicalrelid = 'pybatch.heartbeats'::regclass"
        ).fetchone() == (1,)
