"""Every documented job, run as the role docs/permissions.md gives it to, and installs that fail
leave nothing behind. The jobs: a writer beats (client included) and disconnects; a flusher runs
`pybatch flush`, `pybatch scheduler` (with --interval and --metrics-port), installs the pg_cron job
and runs what the job runs; a reader runs `pybatch status`."""

from __future__ import annotations

import logging
import socket
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import psycopg.conninfo
import pytest
from psycopg import sql

from pybatch import HeartbeatClient
from pybatch.errors import InvalidSetting, PermissionDenied
from pybatch.grants import Grant, grant
from pybatch.schedule import cron
from pybatch.schedule.scheduler import Scheduler
from tests.conftest import run_pybatch
from tests.helpers import connected, last_connected, make_agents, stage
from tests.integration.roles import as_role, login_role


def role_dsn(dsn: str, role: str) -> str:
    return psycopg.conninfo.make_conninfo(dsn, user=role)


def cron_admin(dsn: str) -> psycopg.Connection:
    return psycopg.connect(psycopg.conninfo.make_conninfo(dsn, dbname="postgres"), autocommit=True)


def jobs_of(dsn: str) -> list[tuple[str, str, str]]:
    """(name, schedule, username) of this database's pybatch jobs, as the superuser sees them."""
    database = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    with cron_admin(dsn) as admin:
        rows = admin.execute(
            "SELECT jobname, schedule, username FROM cron.job WHERE jobname LIKE %s ORDER BY 1",
            (f"pybatch-%-{database}",),
        ).fetchall()
    return [(str(a), str(b), str(c)) for a, b, c in rows]


def flush_interval(conn: psycopg.Connection) -> float:
    row = conn.execute("SELECT extract(epoch FROM flush_interval)::float8 FROM pybatch.settings").fetchone()
    assert row is not None
    return float(row[0])


@pytest.fixture
def cron_role(conn: psycopg.Connection, dsn: str) -> Iterator[str]:
    """A login role with USAGE on schema cron (what pg_cron needs to own jobs), and nothing in the app."""
    with login_role(conn, "cronjob") as role, cron_admin(dsn) as admin:
        admin.execute("CREATE EXTENSION IF NOT EXISTS pg_cron")
        # What `pybatch cron install` tells an administrator to grant.
        admin.execute(sql.SQL("GRANT USAGE ON SCHEMA cron TO {}").format(sql.Identifier(role)))
        admin.execute(
            sql.SQL("GRANT EXECUTE ON FUNCTION {} TO {}").format(
                sql.SQL(cron.SCHEDULE_IN_DATABASE), sql.Identifier(role)
            )
        )
        try:
            yield role
        finally:
            cron.remove(conn)  # as the superuser: any job the role left
            admin.execute("DELETE FROM cron.job WHERE username = %s", (role,))
            admin.execute(sql.SQL("REVOKE USAGE ON SCHEMA cron FROM {}").format(sql.Identifier(role)))
            admin.execute(
                sql.SQL("REVOKE EXECUTE ON FUNCTION {} FROM {}").format(
                    sql.SQL(cron.SCHEDULE_IN_DATABASE), sql.Identifier(role)
                )
            )


@pytest.fixture
def flusher(conn: psycopg.Connection, cron_role: str) -> str:
    grant(conn, Grant.FLUSHER, cron_role)
    return cron_role


# -- the flusher ----------------------------------------------------------------------------------


def test_flusher_runs_pybatch_flush(conn: psycopg.Connection, dsn: str, flusher: str) -> None:
    agents = make_agents(conn, 5)
    at = datetime.now(UTC) - timedelta(seconds=1)
    stage(conn, agents, at)
    done = run_pybatch("flush", "--dsn", role_dsn(dsn, flusher))
    assert done.returncode == 0, done.stderr
    assert set(last_connected(conn, agents).values()) == {at}


def test_flusher_runs_the_scheduler_with_interval_and_metrics(
    conn: psycopg.Connection,
    dsn: str,
    flusher: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    agents = make_agents(conn, 20)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    caplog.set_level(logging.INFO, logger="pybatch")
    scheduler = Scheduler(role_dsn(dsn, flusher), interval=0.5, metrics_port=port)
    thread = threading.Thread(target=scheduler.run, daemon=True)
    thread.start()
    try:
        at = datetime.now(UTC) - timedelta(seconds=1)
        stage(conn, agents, at)
        deadline = time.monotonic() + 20
        while set(last_connected(conn, agents).values()) != {at}:
            assert time.monotonic() < deadline, "the flusher's scheduler never merged"
            time.sleep(0.1)
        # The flush commits before the scheduler counts it: wait for the counter, not the merge.
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                metrics = response.read().decode()
            if "pybatch_staging_rows" in metrics and 'pybatch_flushes_total{outcome="ok"}' in metrics:
                break
            assert time.monotonic() < deadline, metrics
            time.sleep(0.1)
    finally:
        scheduler.request_stop()
        thread.join(timeout=20)
    assert flush_interval(conn) == 0.5  # its --interval was stored
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []


def test_flusher_installs_the_pg_cron_job_and_can_run_what_it_runs(
    conn: psycopg.Connection,
    dsn: str,
    flusher: str,
) -> None:
    job = connected(role_dsn(dsn, flusher), cron.install, 5, force_loop=True)
    assert job.username == flusher and "flush_loop" in job.command
    assert {(name, user) for name, _, user in jobs_of(dsn)} == {
        (job.name, flusher),
        (cron.purge_job_name(str(psycopg.conninfo.conninfo_to_dict(dsn)["dbname"])), flusher),
    }
    agents = make_agents(conn, 5)
    at = datetime.now(UTC) - timedelta(seconds=1)
    stage(conn, agents, at)
    with as_role(dsn, flusher) as as_flusher:  # what pg_cron runs, as the role it runs as
        as_flusher.execute("CALL pybatch.flush_loop('1 second', clock_timestamp() + interval '1.5 seconds')")
        as_flusher.execute(cron.FLUSH_COMMAND)
    assert set(last_connected(conn, agents).values()) == {at}
    assert connected(role_dsn(dsn, flusher), cron.remove) == 2


# -- installs that fail leave nothing behind ------------------------------------------------------


def test_install_without_the_flusher_grant_fails_and_schedules_nothing(
    conn: psycopg.Connection,
    dsn: str,
    cron_role: str,
) -> None:
    before = flush_interval(conn)
    with pytest.raises(PermissionDenied):
        connected(role_dsn(dsn, cron_role), cron.install, 7)
    assert jobs_of(dsn) == []
    assert flush_interval(conn) == before


def test_install_that_breaks_the_staleness_budget_fails_and_schedules_nothing(
    conn: psycopg.Connection,
    dsn: str,
) -> None:
    before = flush_interval(conn)
    with pytest.raises(InvalidSetting, match="staleness budget"):
        cron.install(conn, 25)  # 15 s beats + 1 s writes + 25 s > the 30 s inactive timeout
    assert jobs_of(dsn) == []
    assert flush_interval(conn) == before
    done = run_pybatch("cron", "install", "--interval", "25s", "--dsn", dsn)
    assert done.returncode != 0 and "staleness budget" in done.stderr and "Traceback" not in done.stderr
    assert jobs_of(dsn) == []


# -- settings and the job agree ---------------------------------------------------------------------


def test_config_set_flush_interval_reschedules_the_job_and_status_flags_drift(
    conn: psycopg.Connection,
    dsn: str,
) -> None:
    try:
        cron.install(conn, 5)
        done = run_pybatch("config", "set", "flush_interval", "7s", "--dsn", dsn)
        assert done.returncode == 0, done.stderr
        assert "rescheduled" in done.stdout
        job = cron.installed_job(conn)
        assert job is not None and cron.job_interval(job) == 7.0
        assert flush_interval(conn) == 7.0
        assert cron.status(conn).error is None
        # A change made behind pybatch's back is flagged.
        conn.execute("UPDATE pybatch.settings SET flush_interval = '6 seconds'")
        error = cron.status(conn).error
        assert error is not None and "every 7s" in str(error) and "6s" in str(error)
    finally:
        cron.remove(conn)


def test_config_set_refuses_a_flush_interval_that_breaks_the_staleness_budget(
    conn: psycopg.Connection,
    dsn: str,
) -> None:
    before = flush_interval(conn)
    done = run_pybatch("config", "set", "flush_interval", "25s", "--dsn", dsn)
    assert done.returncode != 0 and "staleness budget" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert flush_interval(conn) == before


# -- the writer and the reader ----------------------------------------------------------------------


def test_writer_client_reads_future_tolerance_without_a_warning(
    conn: psycopg.Connection,
    dsn: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    conn.execute("UPDATE pybatch.settings SET future_tolerance = '42 seconds'")
    (agent,) = make_agents(conn, 1)
    with login_role(conn, "writer") as role:
        grant(conn, Grant.WRITER, role)
        caplog.set_level(logging.WARNING, logger="pybatch")
        with HeartbeatClient(role_dsn(dsn, role)) as client:
            client.beat(agent)
            client.flush_buffer()
            assert client.future_tolerance == 42.0
            client.disconnect(agent)
    assert not [r for r in caplog.records if "future_tolerance" in r.getMessage()]


def test_reader_runs_pybatch_status(conn: psycopg.Connection, dsn: str) -> None:
    make_agents(conn, 3)
    with login_role(conn, "reader") as role:
        grant(conn, Grant.READER, role)
        done = run_pybatch("status", "--dsn", role_dsn(dsn, role))
    assert done.returncode in (0, 3, 4, 5), done.stderr  # a health verdict, not an error
    assert "permission denied" not in done.stderr.lower() and "Traceback" not in done.stderr


def test_unknown_agent_ids_are_not_created(conn: psycopg.Connection, dsn: str) -> None:
    """A writer can stage beats for any id, but a flush never creates an agent (docs/permissions.md)."""
    stranger = uuid.uuid4()
    conn.execute("INSERT INTO pybatch.heartbeats (agent_id) VALUES (%s)", (stranger,))
    done = run_pybatch("flush", "--dsn", dsn)
    assert done.returncode == 0
    assert last_connected(conn, [stranger]) == {}
