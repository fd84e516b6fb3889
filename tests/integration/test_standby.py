"""pybatch against a real streaming standby on loopback (pg_basebackup -R -X stream of a test
cluster): the views and the CLI there, the scheduler standing by until promotion, and doctor
naming a standby whose hot_standby_feedback holds back pruning on the primary (docs/ha.md)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from pybatch.doctor import Thresholds, doctor
from pybatch.flush import flush
from pybatch.local import LocalCluster
from tests.conftest import run_pybatch
from tests.ha_fixtures import primary, promote, replay_caught_up, standby_of, wait_until
from tests.helpers import connected, last_connected, make_agents, stage
from tests.integration.test_scheduler import LEADER_LINE, SchedulerProcess, spawn

pytestmark = pytest.mark.slow
__all__ = ["primary", "spawn"]  # the fixtures, imported for this module's tests

STANDBY = "this server is a standby (read-only): point at the primary"


@pytest.fixture
def standby(primary: LocalCluster) -> Iterator[LocalCluster]:
    with standby_of(primary, {"wal_receiver_status_interval": "1s"}) as node:
        yield node


def test_views_answer_and_writing_commands_say_standby_in_one_line(
    primary: LocalCluster, standby: LocalCluster
) -> None:
    with psycopg.connect(primary.url(), autocommit=True) as conn:
        make_agents(conn, 5)
    replay_caught_up(primary, standby)
    dsn = standby.url()
    with psycopg.connect(dsn, autocommit=True) as conn:
        counts = conn.execute("SELECT count(*) FROM pybatch.agent_status").fetchone()
        assert counts == (5,)
        health = conn.execute("SELECT status FROM pybatch.health").fetchone()
        assert health is not None
    status = run_pybatch("--dsn", dsn, "status")
    assert "Traceback" not in status.stderr and status.returncode in (0, 3, 4), status.stderr
    for command in (
        ["flush"],
        ["config", "set", "flush_interval", "6s"],
        ["cron", "install", "--interval", "5s"],
        ["cron", "remove"],
        ["migrate"],
        ["grant", "writer", "postgres"],
        ["uninstall", "--yes"],
    ):
        result = run_pybatch("--dsn", dsn, *command)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 1 and len(lines) == 1, (command, result.stderr)
        assert STANDBY in lines[0] and "Traceback" not in result.stderr, (command, lines)
    report = run_pybatch("--dsn", dsn, "doctor")
    line = next(line for line in report.stdout.splitlines() if "connection:" in line)
    assert line.startswith("WARN") and STANDBY in line, line
    # Nothing was written on the primary by any of them.
    with psycopg.connect(primary.url(), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM pybatch.flush_log").fetchone() == (0,)
        interval = conn.execute("SELECT flush_interval FROM pybatch.settings").fetchone()
        assert interval == (timedelta(seconds=5),)


def test_scheduler_stands_by_quietly_on_a_standby_and_leads_after_promotion(
    primary: LocalCluster, standby: LocalCluster, spawn: Callable[..., SchedulerProcess]
) -> None:
    with psycopg.connect(primary.url(), autocommit=True) as conn:
        agents = make_agents(conn, 50)
    replay_caught_up(primary, standby)
    scheduler = spawn(standby.url(), "--interval", "500ms")
    scheduler.wait_for(STANDBY, timeout=30)
    # Several intervals on the standby: one line, no errors, no flush attempts.
    wait_until(lambda: scheduler.proc.poll() is None and _seconds_since_start(scheduler) > 3, 30, "3 s standing by")
    text = scheduler.text()
    assert text.count(STANDBY) == 1, text
    assert not re.search(r"read-only transaction|ERROR|WARNING|Traceback", text), text

    promote(standby)
    took = scheduler.wait_for(LEADER_LINE, timeout=30)
    print(f"scheduler led {took:.2f}s after promotion (interval 0.5s)")
    at = datetime.now(UTC) - timedelta(seconds=1)
    with psycopg.connect(standby.url(), autocommit=True) as conn:
        stage(conn, agents, at)
        wait_until(lambda: set(last_connected(conn, agents).values()) == {at}, 30, "the promoted node to merge")
    assert scheduler.stop() == 0
    assert "the server is a primary now" in scheduler.text()


def _seconds_since_start(process: SchedulerProcess) -> float:
    return time.time() - process.log.stat().st_ctime


def test_doctor_names_a_standby_whose_feedback_holds_back_pruning(primary: LocalCluster, standby: LocalCluster) -> None:
    with psycopg.connect(standby.conninfo("postgres"), autocommit=True) as postgres:
        postgres.execute("ALTER SYSTEM SET hot_standby_feedback = on")
        postgres.execute("SELECT pg_reload_conf()")
    dsn = primary.url()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE public.workspace_agents SET (fillfactor = 100)")
        agents = make_agents(conn, 2000)
        conn.execute("VACUUM public.workspace_agents")
    replay_caught_up(primary, standby)
    limits = Thresholds(hot_min_updates=500, xmin_age_min=20)
    with psycopg.connect(standby.url(), autocommit=False) as reader:
        # A long report on the standby: its snapshot, sent back as feedback, pins the primary's horizon.
        reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        reader.execute("SELECT count(*) FROM public.workspace_agents").fetchone()
        with psycopg.connect(dsn, autocommit=True) as conn:
            wait_until(
                lambda: _feedback_xmin(conn) is not None,
                30,
                "the standby's hot_standby_feedback xmin on the primary",
            )
            for round_ in range(6):
                stage(conn, agents, datetime.now(UTC) - timedelta(seconds=1) + timedelta(milliseconds=round_))
                connected(dsn, _flush)
            report = doctor(conn, limits)
        reader.rollback()
    checks = {check.name: check for check in report.checks}
    hot = checks["hot_updates"]
    print(hot.message)
    assert hot.level == "warn" and "standby" in hot.message and "hot_standby_feedback" in hot.message, hot
    assert "streaming standby" in checks["connection"].message, checks["connection"]


def _feedback_xmin(conn: psycopg.Connection) -> object:
    row = conn.execute("SELECT backend_xmin FROM pg_stat_replication WHERE backend_xmin IS NOT NULL").fetchone()
    return row[0] if row else None


def _flush(conn: psycopg.Connection) -> None:
    result = flush(conn)
    assert result.ok, result


def test_a_leader_notices_its_sessions_end_before_its_next_tick(
    conn: psycopg.Connection, dsn: str, spawn: Callable[..., SchedulerProcess]
) -> None:
    """A failover or restart ends the leader's sessions between two flushes: it reconnects then,
    not a whole interval later (the interval here is 60 s)."""
    scheduler = spawn(dsn, "--interval", "60s")
    scheduler.wait_for(LEADER_LINE, timeout=30)
    conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name = 'pybatch' AND pid <> pg_backend_pid()"
    )
    took = scheduler.wait_for(LEADER_LINE, count=2, timeout=15)
    print(f"led again {took:.2f}s after its sessions were terminated (interval 60s)")
    assert "database available again" in scheduler.text()
    assert scheduler.stop() == 0
