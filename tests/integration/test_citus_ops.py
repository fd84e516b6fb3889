"""pybatch operated on Citus (coordinator + 2 workers, public.workspace_agents distributed by id):
`pybatch doctor` checks the layout and measures the shards, not the coordinator's empty shell;
`pybatch scheduler` and the pg_cron job's command, run on the coordinator, flush a distributed
fleet so that every agent ends as the reference model says."""

from __future__ import annotations

import random
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import sql

from pybatch import migrate, status
from pybatch.doctor import FAIL, OK, WARN, Check, DoctorReport, doctor
from pybatch.flush import flush
from pybatch.local_citus import CitusCluster
from pybatch.schedule import cron
from tests.citus_fixtures import citus_cluster, citus_dsn, staged  # noqa: F401 (fixtures)
from tests.helpers import connected
from tests.integration.test_scheduler import SchedulerProcess
from tests.model import AgentState, Beat, Disconnect, actual_states, expected_states

pytestmark = pytest.mark.citus

T0 = datetime(2026, 1, 1, tzinfo=UTC)
REPLICAS: list[uuid.UUID | None] = [None, uuid.UUID(int=1), uuid.UUID(int=2)]


def checks(report: DoctorReport) -> dict[str, Check]:
    return {c.name: c for c in report.checks}


def add_agents(conn: psycopg.Connection, n: int) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(n)]
    conn.execute(
        "INSERT INTO public.workspace_agents (id, created_at) SELECT unnest(%s::uuid[]), %s",
        (ids, T0 - timedelta(days=1)),
    )
    return ids


# -- doctor -------------------------------------------------------------------------------------
def test_doctor_checks_colocation_and_reads_the_shards(citus_dsn: str) -> None:  # noqa: F811
    with psycopg.connect(citus_dsn, autocommit=True) as conn:
        agents = add_agents(conn, 3_000)
        for second in range(3):
            conn.execute(
                "INSERT INTO pybatch.heartbeats (agent_id, beat_at) SELECT unnest(%s::uuid[]), %s",
                (agents, T0 + timedelta(seconds=second)),
            )
            assert flush(conn).ok
        shell = conn.execute("SELECT pg_relation_size('public.workspace_agents')").fetchone()
        row = conn.execute(
            "SELECT citus_relation_size('public.workspace_agents'),"
            " (SELECT heap_bytes FROM pybatch.flush_log ORDER BY id DESC LIMIT 1)"
        ).fetchone()
        assert row is not None
        shards_heap, logged_heap = row
        shape = status.table_shape(conn)
    assert shell == (0,) and shards_heap > 0  # the coordinator's table is an empty shell
    # The shape is the shards': every row counted on the workers, sizes summed over them.
    assert shape.live_rows == 3_000 and shape.heap_bytes == shards_heap and shape.index_count == 1
    assert shape.method == "Citus: 8 shards on 2 node(s), exact: every page read"
    assert shape.avg_row_bytes is not None and shape.rows_per_page is not None and shape.rows_per_page > 10
    assert logged_heap == shards_heap  # each shard group's flush measured its own shard

    found = checks(connected(citus_dsn, doctor))
    layout = found["citus_layout"]
    assert layout.level == OK and "co-located with it" in layout.message
    assert "8 shard groups on 2 node(s)" in layout.message
    assert found["table_shape"].level == OK and "3000 live rows" in found["table_shape"].message
    assert "Citus: 8 shards on 2 node(s)" in found["table_shape"].message
    growth = found["table_growth"]
    # The first merges after a bulk load are not HOT, so the heap may have grown (a warning);
    # either way the sizes are the shards', not the empty shell's.
    assert "summed over the shards" in growth.message and "heap 0 kB" not in growth.message, growth.message
    for name in ("target_table", "staging_growth", "pending_and_quarantine"):
        assert found[name].level == OK, found[name]
    # Likewise HOT: three flushes right after a bulk load of packed pages may fall under the
    # threshold (a warning, never a failure); the share is counted on the shards' flushes.
    hot = found["hot_updates"]
    assert hot.level in (OK, WARN) and "merge updates over the last 3 flushes" in hot.message, hot


def test_doctor_names_what_is_not_distributed_or_not_colocated(citus_dsn: str) -> None:  # noqa: F811
    with psycopg.connect(citus_dsn, autocommit=True) as conn:
        conn.execute("SET citus.multi_shard_modify_mode = 'sequential'")
        conn.execute("SELECT update_distributed_table_colocation('pybatch.quarantine', colocate_with => 'none')")
        layout = checks(connected(citus_dsn, doctor))["citus_layout"]
        assert layout.level == FAIL and "pybatch.quarantine is not co-located" in layout.message, layout
        assert "update_distributed_table_colocation('pybatch.quarantine'" in layout.message

        conn.execute("SELECT undistribute_table('pybatch.pending')")
        layout = checks(connected(citus_dsn, doctor))["citus_layout"]
        assert layout.level == FAIL and "pybatch.pending is a local table" in layout.message, layout
        assert "pybatch.quarantine is not co-located" in layout.message

        # The advice works: each fix clears its own complaint.
        conn.execute("SELECT pybatch.citus_distribute()")
        layout = checks(connected(citus_dsn, doctor))["citus_layout"]
        assert layout.level == FAIL and "pybatch.pending" not in layout.message, layout
        conn.execute(
            "SELECT update_distributed_table_colocation('pybatch.quarantine',"
            " colocate_with => 'public.workspace_agents')"
        )
        assert checks(connected(citus_dsn, doctor))["citus_layout"].level == OK


def test_doctor_with_a_local_workspace_agents_on_citus(citus_cluster: CitusCluster) -> None:  # noqa: F811
    """A Citus coordinator whose workspace_agents stays local: pybatch works as on plain PostgreSQL,
    and doctor says so; table_shape measures the local table itself."""
    name = f"l_{uuid.uuid4().hex[:16]}"
    citus_cluster.ensure_database(name)
    try:
        url = citus_cluster.url(name)
        connected(url, migrate.apply)
        with psycopg.connect(url, autocommit=True) as conn:
            add_agents(conn, 50)
            assert conn.execute("SELECT pybatch.citus_distributed()").fetchone() == (False,)
        found = checks(connected(url, doctor))
        layout = found["citus_layout"]
        assert layout.level == OK and "works as on plain PostgreSQL" in layout.message, layout
        assert "create_distributed_table('public.workspace_agents', 'id')" in layout.message
        assert "50 live rows" in found["table_shape"].message and "Citus" not in found["table_shape"].message
    finally:
        citus_cluster.drop_database(name)


# -- schedulers ---------------------------------------------------------------------------------
class Writer(threading.Thread):
    """Rounds of COPY beats and direct disconnects through the coordinator, recording every event."""

    def __init__(self, dsn: str, agents: list[uuid.UUID], rounds: int, seed: int, pause: float) -> None:
        super().__init__()
        self.dsn, self.agents, self.rounds, self.pause = dsn, agents, rounds, pause
        self.rng = random.Random(seed)
        self.events: list[Beat | Disconnect] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        rng = self.rng
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                for _ in range(self.rounds):
                    batch = [
                        Beat(rng.choice(self.agents), T0 + timedelta(seconds=rng.randrange(300)), rng.choice(REPLICAS))
                        for _ in range(1_000)
                    ]
                    with (
                        conn.cursor() as cur,
                        cur.copy("COPY pybatch.heartbeats (agent_id, replica_id, beat_at) FROM STDIN") as cp,
                    ):
                        for b in batch:
                            cp.write_row((b.agent_id, b.replica_id, b.at))
                    self.events.extend(batch)
                    for _ in range(20):
                        d = Disconnect(rng.choice(self.agents), T0 + timedelta(seconds=rng.randrange(300)))
                        conn.execute("SELECT pybatch.disconnect(%s, %s)", (d.agent_id, d.at))
                        self.events.append(d)
                    time.sleep(self.pause)
        except BaseException as exc:  # reported by the test
            self.error = exc


def assert_matches_model(conn: psycopg.Connection, agents: list[uuid.UUID], events: list[Beat | Disconnect]) -> None:
    expected = expected_states(events)
    actual = actual_states(conn, agents)
    wrong = [a for a in agents if actual[a] != expected.get(a, AgentState())]
    assert wrong == [], [(actual[a], expected.get(a)) for a in wrong[:3]]


def test_pybatch_scheduler_flushes_a_distributed_fleet(citus_dsn: str) -> None:  # noqa: F811
    with psycopg.connect(citus_dsn, autocommit=True) as conn:
        agents = add_agents(conn, 4_000)
    scheduler = SchedulerProcess(citus_dsn, "--interval", "1s")
    try:
        writer = Writer(citus_dsn, agents, rounds=6, seed=7, pause=0.5)
        writer.start()
        writer.join()
        assert writer.error is None, writer.error
        # SIGTERM: the scheduler stops after a final flush of what is staged.
        assert scheduler.stop() == 0, scheduler.text()
    finally:
        scheduler.close()
    with psycopg.connect(citus_dsn, autocommit=True) as conn:
        assert staged(conn) == (0, 0)
        row = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE error IS NOT NULL), sum(rows_staged)"
            " FROM pybatch.flush_log WHERE NOT EXISTS (SELECT FROM pybatch.flush_log_shards s"
            " WHERE s.flush_id = flush_log.id AND s.error IS NOT NULL)"
        ).fetchone()
        assert row is not None
        flushes, failed, rows = row
        assert flushes >= 3 and failed == 0 and rows == 6_000  # several shard-local flushes took every row
        per_shard = conn.execute(
            "SELECT count(DISTINCT shard_id), sum(rows_staged) FROM pybatch.flush_log_shards"
        ).fetchone()
        assert per_shard == (8, 6_000)
        assert_matches_model(conn, agents, writer.events)


def test_the_cron_jobs_command_on_the_coordinator_flushes_a_distributed_fleet(citus_dsn: str) -> None:  # noqa: F811
    """`pybatch cron install` on the coordinator: a per-minute job (pg_cron 1.4) in this database
    running CALL pybatch.flush_loop('1 seconds'). pg_cron starts it only at the next minute, so the
    test runs that same command here, on the coordinator, bounded to 2.5 s by its stop_at argument,
    while a writer writes through the coordinator."""
    dbname = psycopg.conninfo.conninfo_to_dict(citus_dsn)["dbname"]
    job = connected(citus_dsn, cron.install, 1)
    try:
        assert job.command == "CALL pybatch.flush_loop('1 seconds')" and job.schedule == "* * * * *"
        assert job.database == dbname and job.active
        with psycopg.connect(citus_dsn, autocommit=True) as conn:
            agents = add_agents(conn, 4_000)
            command = sql.SQL(job.command.removesuffix("')") + "', clock_timestamp() + interval '2.5 seconds')")
            writer = Writer(citus_dsn, agents, rounds=5, seed=11, pause=0.3)
            writer.start()
            started = time.monotonic()
            conn.execute(command)  # the job's own command, stopped early
            looped = time.monotonic() - started
            writer.join()
            assert writer.error is None, writer.error
            conn.execute(command)  # and once more, for what was written during the last pass
            assert 2.0 < looped < 10, looped
            assert staged(conn) == (0, 0)
            flushes = conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE error IS NOT NULL), sum(rows_staged) FROM pybatch.flush_log"
            ).fetchone()
            assert flushes is not None
            assert flushes[0] >= 4 and flushes[1] == 0 and flushes[2] == 5_000, flushes
            per_shard = conn.execute(
                "SELECT count(DISTINCT shard_id), sum(rows_staged) FROM pybatch.flush_log_shards"
            ).fetchone()
            assert per_shard == (8, 5_000)  # shard-local: every group merged its own rows
            assert_matches_model(conn, agents, writer.events)
    finally:
        connected(citus_dsn, cron.remove)
