"""Every pybatch connection through pgbouncer in transaction mode (docs/ha.md#poolers).

A pooler in transaction mode hands each transaction whichever server backend is free: psycopg's
automatic server-side prepared statements then fail (`prepared statement "_pg3_0" already
exists`, FACTS.md), and a session's backend pid changes between transactions. pgbouncer is
Debian's package (scripts/setup.sh installs it); the test starts its own on a free port."""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from pybatch import HeartbeatClient
from tests.conftest import run_pybatch
from tests.ha_fixtures import PgBouncer, pgbouncer_before, pgbouncer_missing, wait_until
from tests.helpers import last_connected, make_agents
from tests.integration.test_scheduler import LEADER_LINE, SchedulerProcess, spawn

pytestmark = pytest.mark.skipif(pgbouncer_missing() is not None, reason=pgbouncer_missing() or "")
__all__ = ["spawn"]  # the fixture, imported for this module's tests

# What must never appear: the pooler's prepared-statement clash, a traceback, an error line.
FAILURES = re.compile(r"prepared statement|Traceback|\bERROR\b|\berror\b", re.IGNORECASE)


@pytest.fixture
def bouncer(dsn: str) -> Iterator[PgBouncer]:
    port = int(psycopg.conninfo.conninfo_to_dict(dsn)["port"] or 0)
    with pgbouncer_before(port, pool_size=4) as running:
        yield running


def merging_flushes(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT count(*) FROM pybatch.flush_log WHERE agents_updated > 0").fetchone()
    return int(row[0]) if row else 0


def flushes(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT count(*) FROM pybatch.flush_log").fetchone()
    return int(row[0]) if row else 0


def _dbname(dsn: str) -> str:
    return str(psycopg.conninfo.conninfo_to_dict(dsn)["dbname"])


def test_immediate_beats_and_disconnects_through_a_transaction_pooler(
    conn: psycopg.Connection, dsn: str, bouncer: PgBouncer
) -> None:
    agents = make_agents(conn, 20)
    pooled = bouncer.dsn(_dbname(dsn))
    # Many clients and a psycopg pool, so statements land on different server backends and the
    # same statement runs far more often than psycopg's prepare threshold (5).
    clients = [HeartbeatClient(pooled, mode="immediate") for _ in range(3)]
    try:
        for round_ in range(10):
            for i, agent in enumerate(agents):
                clients[(i + round_) % 3].beat(agent)
        at = datetime.now(UTC)
        for i, agent in enumerate(agents):
            assert clients[i % 3].disconnect(agent, at=at + timedelta(milliseconds=i)) is True
    finally:
        for client in clients:
            client.close()
    with (
        ConnectionPool(pooled, min_size=3, max_size=3, kwargs={"autocommit": True}) as pool,
        HeartbeatClient(pool=pool, mode="immediate") as hb,
    ):
        for _ in range(10):
            for agent in agents:
                hb.beat(agent)
        stats = hb.stats
    assert stats.write_failures == 0 and stats.rows_written == 200
    rows = conn.execute(
        "SELECT count(*) FILTER (WHERE disconnected_at IS NOT NULL) FROM public.workspace_agents WHERE id = ANY(%s)",
        (agents,),
    ).fetchone()
    assert rows == (20,)
    staged = conn.execute("SELECT count(*) FROM pybatch.heartbeats").fetchone()
    assert staged == (20 * 10 + 200,)


def test_buffered_client_and_two_schedulers_through_a_transaction_pooler(
    conn: psycopg.Connection, dsn: str, bouncer: PgBouncer, spawn: Callable[..., SchedulerProcess]
) -> None:
    agents = make_agents(conn, 300)
    pooled = bouncer.dsn(_dbname(dsn))
    first = spawn(pooled, "--interval", "1s")
    first.wait_for(LEADER_LINE, timeout=30)
    second = spawn(pooled, "--interval", "1s")
    latest: dict[uuid.UUID, datetime] = {}
    done = threading.Event()

    with HeartbeatClient(pooled, mode="buffered", write_interval="200ms") as hb:

        def beat_for_a_while() -> None:
            while not done.is_set():
                at = datetime.now(UTC)
                for agent in agents:
                    hb.beat(agent, at=at)
                latest.update(dict.fromkeys(agents, at))
                done.wait(0.3)

        thread = threading.Thread(target=beat_for_a_while)
        thread.start()
        try:
            # Flushes through the pooler merge what the buffered client writes through it.
            wait_until(lambda: merging_flushes(conn) >= 5, 60, "five flushes that merged beats")
        finally:
            done.set()
            thread.join()
        hb.flush_buffer()
        stats = hb.stats
    assert stats.write_failures == 0, stats
    assert first.stop() == 0 and second.stop() == 0
    # One of them did the final flush that drained the rest (whoever led at the end).
    if conn.execute("SELECT count(*) FROM pybatch.heartbeats").fetchone() != (0,):
        flushed = run_pybatch("--dsn", pooled, "flush")
        assert flushed.returncode == 0, flushed.stderr
    assert last_connected(conn, agents) == latest
    failed = conn.execute("SELECT count(*) FROM pybatch.flush_log WHERE error IS NOT NULL").fetchone()
    assert failed == (0,)
    for process in (first, second):
        text = process.text()
        assert not FAILURES.search(text), text


def test_one_leader_at_a_time_through_a_transaction_pooler(
    conn: psycopg.Connection, dsn: str, bouncer: PgBouncer, spawn: Callable[..., SchedulerProcess]
) -> None:
    pooled = bouncer.dsn(_dbname(dsn))
    first = spawn(pooled, "--interval", "500ms")
    first.wait_for(LEADER_LINE, timeout=30)
    second = spawn(pooled, "--interval", "500ms")
    second.wait_for("standing by", timeout=30)
    wait_until(lambda: flushes(conn) >= 12, 60, "a dozen flushes")
    # The standby first: stopping the leader first hands it the lease, and it would lead.
    assert second.stop() == 0 and first.stop() == 0
    assert first.text().count(LEADER_LINE) == 1 and "lost the scheduler lease" not in first.text()
    assert LEADER_LINE not in second.text(), second.text()


def test_flush_doctor_and_migrate_through_a_transaction_pooler(dsn: str, bouncer: PgBouncer) -> None:
    pooled = bouncer.dsn(_dbname(dsn))
    for _ in range(3):
        flushed = run_pybatch("--dsn", pooled, "flush")
        assert flushed.returncode == 0, flushed.stderr
    doctor = run_pybatch("--dsn", pooled, "doctor")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    line = next(line for line in doctor.stdout.splitlines() if "connection:" in line)
    assert line.startswith("OK") and "through a connection pooler" in line and "`pybatch migrate`" in line, line
    # migrate holds a session lock: through a transaction pooler it could stay held on a pooled
    # backend, so migrate refuses, in one line.
    migrated = run_pybatch("--dsn", pooled, "migrate")
    assert migrated.returncode == 1 and "Traceback" not in migrated.stderr
    assert migrated.stderr.strip().splitlines() == [
        "pybatch: error: migrate: this connection goes through a connection pooler; migrate holds a session "
        "lock, so point --dsn at the server itself (or a session-mode pool)"
    ]
    direct = run_pybatch("--dsn", dsn, "doctor")
    assert "a primary, connected directly" in direct.stdout, direct.stdout
