"""The Python scheduler against a real server: leader election with real processes, takeover
after SIGKILL, SIGTERM/SIGINT with a final flush, a database outage, catch-up drains, metrics."""

from __future__ import annotations

import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from pybatch.errors import ConfigError
from pybatch.local import LocalCluster
from pybatch.schedule.scheduler import Scheduler
from tests.helpers import last_connected, make_agents, stage

LEADER_LINE = "became leader"


class SchedulerProcess:
    """`python -m pybatch scheduler` as a subprocess, its stderr in a file we can read while it runs."""

    def __init__(self, dsn: str, *args: str) -> None:
        self.log = Path(tempfile.mkstemp(prefix="pybatch-scheduler-", suffix=".log")[1])
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYBATCH_", "PG"))}
        with self.log.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pybatch", "--dsn", dsn, "--log-level", "info", "scheduler", *args],
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
            )

    def text(self) -> str:
        return self.log.read_text()

    def wait_for(self, needle: str, timeout: float = 20, count: int = 1) -> float:
        """Seconds until `needle` appears `count` times in the log."""
        started = time.monotonic()
        while self.text().count(needle) < count:
            assert self.proc.poll() is None, f"scheduler exited early:\n{self.text()}"
            assert time.monotonic() - started < timeout, f"no {needle!r} in time:\n{self.text()}"
            time.sleep(0.05)
        return time.monotonic() - started

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.unlink(missing_ok=True)


@pytest.fixture
def spawn() -> Iterator[Callable[..., SchedulerProcess]]:
    started: list[SchedulerProcess] = []

    def start(dsn: str, *args: str) -> SchedulerProcess:
        process = SchedulerProcess(dsn, *args)
        started.append(process)
        return process

    yield start
    for process in started:
        process.close()


def staged(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT count(*) FROM pybatch.heartbeats").fetchone()
    assert row is not None
    return int(row[0])


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def flush_count(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT count(*) FROM pybatch.flush_log").fetchone()
    assert row is not None
    return int(row[0])


def lock_holders(conn: psycopg.Connection) -> int:
    """Live schedulers holding the lease: 0 or 1."""
    row = conn.execute(
        "SELECT count(*) FROM pybatch.scheduler_lease l JOIN pg_stat_activity a"
        " ON a.pid = l.holder_pid"
        " WHERE l.expires_at > clock_timestamp()",
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_two_replicas_one_leader_and_takeover_after_sigkill(
    conn: psycopg.Connection,
    dsn: str,
    spawn: Callable[..., SchedulerProcess],
) -> None:
    agents = make_agents(conn, 200)
    latest: dict[uuid.UUID, datetime] = {}
    writing = threading.Event()
    writing.set()

    def writer() -> None:
        """Heartbeats for every agent, every 50 ms, right through the kill."""
        with psycopg.connect(dsn, autocommit=True) as wconn:
            while writing.is_set():
                at = datetime.now(UTC) - timedelta(milliseconds=1)
                stage(wconn, agents, at)
                latest.update(dict.fromkeys(agents, at))
                time.sleep(0.05)

    first = spawn(dsn, "--interval", "1s")
    first.wait_for(LEADER_LINE)
    second = spawn(dsn, "--interval", "1s")
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        # Both running: the second stands by while the first flushes (at least twice).
        second.wait_for("standing by")
        wait_until(lambda: flush_count(conn) >= 2, 20, "two flushes")
        assert LEADER_LINE not in second.text()
        assert lock_holders(conn) == 1

        first.proc.kill()  # SIGKILL: no final flush, no unlock; the server drops its session lock
        first.proc.wait()
        takeover = second.wait_for(LEADER_LINE, timeout=10)
        print(f"standby took over {takeover:.2f}s after SIGKILL (interval 1s)")
        assert takeover <= 3.0  # within one interval, plus slack for a busy 2-core machine
        # The new leader flushes while the writer still writes: wait for its first flush.
        after_kill = flush_count(conn)
        wait_until(lambda: flush_count(conn) > after_kill, 20, "a flush by the new leader")
    finally:
        writing.clear()
        thread.join()
    assert second.stop() == 0  # final flush drains what the writer left
    assert "final flush done" in second.text()
    assert staged(conn) == 0
    assert last_connected(conn, agents) == latest  # every agent has its newest heartbeat: nothing lost
    errors = conn.execute("SELECT count(*) FROM pybatch.flush_log WHERE error IS NOT NULL").fetchone()
    assert errors == (0,)
    starts = [r[0] for r in conn.execute("SELECT started_at FROM pybatch.flush_log ORDER BY id").fetchall()]
    widest = max((b - a).total_seconds() for a, b in itertools.pairwise(starts))
    print(f"widest gap between flushes across the takeover: {widest:.2f}s (interval 1s)")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_after_a_final_flush(
    conn: psycopg.Connection, dsn: str, spawn: Callable[..., SchedulerProcess], sig: int
) -> None:
    agents = make_agents(conn, 10)
    scheduler = spawn(dsn, "--interval", "1m")  # long: only the final flush can merge what comes next
    scheduler.wait_for(LEADER_LINE)
    wait_until(lambda: conn.execute("SELECT count(*) FROM pybatch.flush_log").fetchone() == (1,), 10, "the first flush")
    at = datetime.now(UTC) - timedelta(seconds=1)
    stage(conn, agents, at)
    assert scheduler.stop(sig) == 0
    assert set(last_connected(conn, agents).values()) == {at}
    assert staged(conn) == 0
    assert conn.execute("SELECT flush_interval FROM pybatch.settings").fetchone() == (timedelta(minutes=1),)


def test_database_outage_is_logged_once_and_flushing_resumes(
    own_cluster: LocalCluster,
    spawn: Callable[..., SchedulerProcess],
) -> None:
    dsn = own_cluster.url()
    scheduler = spawn(dsn, "--interval", "1s")
    scheduler.wait_for(LEADER_LINE)
    own_cluster.stop()
    time.sleep(4)  # several failed retries
    assert scheduler.proc.poll() is None
    own_cluster.start()
    scheduler.wait_for(LEADER_LINE, count=2, timeout=20)
    with psycopg.connect(dsn, autocommit=True) as conn:
        agents = make_agents(conn, 5)
        at = datetime.now(UTC) - timedelta(seconds=1)
        stage(conn, agents, at)
        wait_until(lambda: set(last_connected(conn, agents).values()) == {at}, 10, "a flush after the outage")
    assert scheduler.stop() == 0
    text = scheduler.text()
    assert text.count("database unavailable") == 1, text
    assert text.count("database available again") == 1, text


def test_capped_drains_flush_again_at_once(conn: psycopg.Connection, dsn: str) -> None:
    agents = make_agents(conn, 35)
    stage(conn, agents, datetime.now(UTC) - timedelta(seconds=1))
    conn.execute("UPDATE pybatch.settings SET max_rows_per_flush = 10")
    with running(Scheduler(dsn, interval=60)):
        wait_until(lambda: staged(conn) == 0, 10, "the catch-up drains")
    rows = conn.execute("SELECT rows_staged, started_at FROM pybatch.flush_log ORDER BY id").fetchall()
    assert [r[0] for r in rows[:4]] == [10, 10, 10, 5]
    assert (rows[3][1] - rows[0][1]).total_seconds() < 5  # not one 60 s interval apart


def test_a_scheduler_in_lanes_merges_every_beat_and_logs_one_flush_each(conn: psycopg.Connection, dsn: str) -> None:
    agents = make_agents(conn, 300)
    at = datetime.now(UTC) - timedelta(seconds=1)
    stage(conn, agents, at)
    with running(Scheduler(dsn, interval=0.2, lanes=3)):
        wait_until(lambda: set(last_connected(conn, agents).values()) == {at}, 10, "the flush in three lanes")
    row = conn.execute(
        "SELECT count(*), sum(agents_updated), bool_and(error IS NULL) FROM pybatch.flush_log WHERE rows_staged > 0"
    ).fetchone()
    assert row == (1, 300, True)


def test_a_bad_lane_count_is_refused_before_connecting() -> None:
    with pytest.raises(ConfigError, match="lanes must be between 1 and 64, not 0"):
        Scheduler("host=/nonexistent", lanes=0)


def test_slow_flush_is_warned_and_stats_logged_at_debug(
    conn: psycopg.Connection, dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    agents = make_agents(conn, 1)
    # A 100 ms interval (the shortest allowed) and a merge that sleeps 60 ms: over half of it.
    conn.execute("""
        CREATE FUNCTION public.slow() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_sleep(0.06); RETURN NEW; END $$;
        CREATE TRIGGER slow BEFORE UPDATE ON public.workspace_agents FOR EACH ROW EXECUTE FUNCTION public.slow();
    """)
    stage(conn, agents, datetime.now(UTC) - timedelta(seconds=1))
    caplog.set_level(logging.DEBUG, logger="pybatch")
    with running(Scheduler(dsn, interval=0.1)):
        wait_until(lambda: any("over half" in r.getMessage() for r in caplog.records), 10, "the warning")
    warning = next(r for r in caplog.records if "over half" in r.getMessage())
    assert warning.levelno == logging.WARNING
    assert warning.__dict__["flush"]["duration_ms"] > 1
    stats = [r for r in caplog.records if r.levelno == logging.DEBUG and "flush" in r.__dict__]
    assert stats and "rows_staged" in stats[0].__dict__["flush"]


def test_metrics_endpoint_serves_flush_metrics(
    conn: psycopg.Connection, dsn: str, spawn: Callable[..., SchedulerProcess]
) -> None:
    agents = make_agents(conn, 20)
    port = free_port()
    scheduler = spawn(dsn, "--interval", "1s", "--metrics-port", str(port))
    scheduler.wait_for(LEADER_LINE)
    stage(conn, agents, datetime.now(UTC) - timedelta(seconds=1))
    wait_until(lambda: staged(conn) == 0, 10, "a flush")
    stage(conn, agents[:3], datetime.now(UTC))  # merged by a later flush: the counter adds up

    def scrape() -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            body = response.read().decode()
        return {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in body.splitlines()
            if line and not line.startswith("#")
        }

    def merged_and_drained() -> bool:
        # The staging gauge is read once per cycle: wait for the cycle after the last merge.
        found = scrape()
        return found.get("pybatch_rows_merged_total", 0) >= 23 and found.get("pybatch_staging_rows") == 0

    wait_until(merged_and_drained, 10, "23 merged rows and staging seen empty")
    samples = scrape()
    assert samples["pybatch_flush_duration_seconds_count"] >= 2
    assert samples['pybatch_flushes_total{outcome="ok"}'] >= 2
    assert samples["pybatch_last_success_timestamp_seconds"] > time.time() - 30
    assert samples["pybatch_staging_rows"] == 0
    assert samples["pybatch_scheduler_leader"] == 1
    assert samples.get('pybatch_errors_total{kind="database"}', 0) == 0
    assert scheduler.stop() == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running(scheduler: Scheduler) -> Iterator[Scheduler]:
    """Run a scheduler in a thread (no signal handlers there) and stop it on exit."""
    thread = threading.Thread(target=scheduler.run)
    thread.start()
    try:
        yield scheduler
    finally:
        scheduler.request_stop()
        thread.join(timeout=20)
        assert not thread.is_alive()


def test_one_leader_when_a_non_superuser_migrated_and_schedulers_run_as_the_flusher(
    empty_dsn: str, spawn: Callable[..., SchedulerProcess]
) -> None:
    """Issue 19 #7: the lease functions belong to a migrating role without pg_read_all_stats, the
    schedulers run as a flusher role; pg_stat_activity hides the schedulers' backend_start from the
    functions' owner, and every claim used to look like a takeover: three schedulers all led."""
    import psycopg.conninfo
    from psycopg import sql

    from pybatch import migrate
    from pybatch.grants import Grant, grant
    from tests.integration.roles import login_role

    with (
        psycopg.connect(empty_dsn, autocommit=True) as admin,
        login_role(admin, "owner") as owner,
        login_role(admin, "flusher") as flusher,
    ):
        dbname = sql.Identifier(admin.info.dbname)
        admin.execute(sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(dbname, sql.Identifier(owner)))
        admin.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(owner)))
        owner_dsn = psycopg.conninfo.make_conninfo(empty_dsn, user=owner)
        with psycopg.connect(owner_dsn, autocommit=True) as conn:
            migrate.apply(conn)
            assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() == (False,)
            grant(conn, Grant.FLUSHER, flusher)
        flusher_dsn = psycopg.conninfo.make_conninfo(empty_dsn, user=flusher)
        # The first leads before the others start: which of three started at once leads is chance.
        schedulers = [spawn(flusher_dsn, "--interval", "500ms")]
        schedulers[0].wait_for(LEADER_LINE, timeout=30)
        schedulers += [spawn(flusher_dsn, "--interval", "500ms") for _ in range(2)]
        for other in schedulers[1:]:
            other.wait_for("standing by", timeout=30)
        wait_until(lambda: flush_count(admin) >= 6, 60, "six flushes")
        for other in schedulers[1:]:  # the standbys first: stopping the leader hands over the lease
            assert other.stop() == 0
        assert schedulers[0].stop() == 0
        leaders = [s for s in schedulers if LEADER_LINE in s.text()]
        assert leaders == [schedulers[0]], [s.text() for s in schedulers]
        admin.execute("DROP SCHEMA pybatch CASCADE")
        admin.execute("DROP SCHEMA pybatch_migrations CASCADE")
        admin.execute("DROP TABLE IF EXISTS public.workspace_agents")
