"""Test fixtures for HA set-ups on loopback: a streaming standby of a test cluster, failover and
switchover, and pgbouncer in transaction mode in front of a server (docs/ha.md).

Like the clusters in tests/conftest.py, every process runs as the server user when the tests run
as root (initdb, pg_ctl, pg_basebackup and pgbouncer all refuse root)."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pybatch import migrate
from pybatch.local import SUPERUSER, LocalCluster, find_bindir, temporary_cluster
from tests.conftest import TEST_SETTINGS
from tests.helpers import connected

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_user() -> str | None:
    """The user server processes run as: None for the current (non-root) user."""
    if os.geteuid() != 0:
        return None
    return os.environ.get("PYBATCH_LOCAL_USER") or "postgres"


def _run_as_server_user(argv: list[str]) -> subprocess.CompletedProcess[str]:
    user = _server_user()
    if user is not None:
        argv = ["runuser", "-u", user, "--", *argv]
    return subprocess.run(argv, cwd="/", capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)


def _own_dir(path: Path) -> None:
    """A directory the server user owns, mode 700 (PostgreSQL requires it for a data directory's parent)."""
    path.mkdir(parents=True, exist_ok=True)
    user = _server_user()
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    os.chmod(path, 0o700)


def wait_until(condition: object, timeout: float, what: str, interval: float = 0.2) -> None:
    """Poll `condition()` until true; AssertionError naming `what` after `timeout` seconds."""
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except psycopg.OperationalError:  # a server not up yet, or going away: poll again
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


# -- standbys ------------------------------------------------------------------------------


def allow_replication(primary: LocalCluster) -> None:
    """A `host replication` line for loopback in the primary's pg_hba.conf (initdb writes one
    already; this makes sure), then a reload."""
    hba = primary.datadir / "pg_hba.conf"
    line = "host replication all 127.0.0.1/32 trust"
    if line not in " ".join(hba.read_text().split()):
        with hba.open("a") as handle:
            handle.write(f"\n{line}\n")
        with psycopg.connect(primary.conninfo("postgres"), autocommit=True) as conn:
            conn.execute("SELECT pg_reload_conf()")


def make_standby(primary: LocalCluster, home: Path, settings: dict[str, str] | None = None) -> LocalCluster:
    """A streaming standby of `primary` in `home` (pg_basebackup -R -X stream), on a free port,
    started. Its postgresql.conf ends with its own port, socket directory and cron.host."""
    allow_replication(primary)
    _own_dir(home)
    standby = LocalCluster(home, settings=primary.settings)
    result = _run_as_server_user(
        [
            str(find_bindir() / "pg_basebackup"),
            "-h",
            "127.0.0.1",
            "-p",
            str(primary.port),
            "-U",
            SUPERUSER,
            "-D",
            str(standby.datadir),
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
        ]
    )
    assert result.returncode == 0, result.stderr
    port = free_port()
    overrides = {
        "port": str(port),
        "unix_socket_directories": f"'{home}'",
        "cron.host": f"'{home}'",
        "hot_standby": "on",
        **(settings or {}),
    }
    with (standby.datadir / "postgresql.conf").open("a") as conf:
        conf.write("\n# --- pybatch test standby ---\n")
        for key, value in overrides.items():
            conf.write(f"{key} = {value}\n")
    (home / "port").write_text(f"{port}\n")
    pg_ctl(standby, "start", "-w", "-t", "60", "-l", str(standby.logfile))
    wait_until(lambda: in_recovery(standby), 60, "the standby to accept connections")
    return standby


def pg_ctl(cluster: LocalCluster, *args: str) -> None:
    result = _run_as_server_user([str(find_bindir() / "pg_ctl"), "-D", str(cluster.datadir), *args])
    assert result.returncode == 0, f"pg_ctl {args[0]}: {result.stdout} {result.stderr}"


def in_recovery(cluster: LocalCluster) -> bool:
    with psycopg.connect(cluster.conninfo("postgres"), autocommit=True, connect_timeout=3) as conn:
        row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    return bool(row and row[0])


def replay_caught_up(primary: LocalCluster, standby: LocalCluster) -> None:
    """Wait until the standby has replayed everything the primary has written so far."""
    with psycopg.connect(primary.conninfo("postgres"), autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    target = row[0]

    def replayed() -> bool:
        with psycopg.connect(standby.conninfo("postgres"), autocommit=True, connect_timeout=3) as conn:
            done = conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)).fetchone()
        return bool(done and done[0])

    wait_until(replayed, 60, f"the standby to replay up to {target}")


def kill_postmaster(cluster: LocalCluster) -> None:
    """kill -9 of the postmaster (a crash of the primary's machine, as far as clients can tell);
    its children follow once they notice."""
    pid = int((cluster.datadir / "postmaster.pid").read_text().splitlines()[0])
    os.kill(pid, signal.SIGKILL)

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_until(gone, 30, "the killed postmaster to exit")
    # Its backends exit when they notice; a left-over one keeps the port, so wait for them too.
    wait_until(lambda: not _port_open(cluster.port), 30, "the killed primary's port to close")


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def promote(standby: LocalCluster) -> None:
    pg_ctl(standby, "promote", "-w", "-t", "60")


def stop_cluster(cluster: LocalCluster) -> None:
    with contextlib.suppress(AssertionError):
        pg_ctl(cluster, "stop", "-m", "immediate", "-w", "-t", "30")


def multi_host_dsn(nodes: list[LocalCluster], dbname: str, **extra: str) -> str:
    """A libpq DSN naming every node, that reaches whichever accepts writes."""
    params = {
        "host": ",".join("127.0.0.1" for _ in nodes),
        "port": ",".join(str(node.port) for node in nodes),
        "user": SUPERUSER,
        "dbname": dbname,
        "target_session_attrs": "read-write",
        "connect_timeout": "3",
        **extra,
    }
    return psycopg.conninfo.make_conninfo(**params)


@contextlib.contextmanager
def standby_of(primary: LocalCluster, settings: dict[str, str] | None = None) -> Iterator[LocalCluster]:
    """A started standby of `primary` in a temporary directory, stopped and removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="pybatch-standby-", dir=os.environ.get("PYBATCH_TEST_TMP", "/tmp")))
    os.chmod(base, 0o755)
    standby: LocalCluster | None = None
    try:
        standby = make_standby(primary, base / "cluster", settings)
        yield standby
    finally:
        if standby is not None:
            stop_cluster(standby)
        shutil.rmtree(base, ignore_errors=True)


# -- pgbouncer -----------------------------------------------------------------------------


def pgbouncer_missing() -> str | None:
    """Why pgbouncer cannot run here, or None."""
    if not Path(PGBOUNCER).exists():
        return "pgbouncer is not installed (Debian: apt-get install pgbouncer; scripts/setup.sh does it)"
    return None


class PgBouncer:
    """pgbouncer in transaction mode on a free loopback port, in front of one server."""

    def __init__(self, server_port: int, home: Path, *, pool_size: int = 10) -> None:
        self.port = free_port()
        self.home = home
        self.server_port = server_port
        self.pool_size = pool_size
        self.process: subprocess.Popen[bytes] | None = None

    def dsn(self, dbname: str, **extra: str) -> str:
        return psycopg.conninfo.make_conninfo(
            host="127.0.0.1", port=str(self.port), user=SUPERUSER, dbname=dbname, **extra
        )

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        os.chmod(self.home, 0o755)
        (self.home / "userlist.txt").write_text(f'"{SUPERUSER}" ""\n')
        config = self.home / "pgbouncer.ini"
        config.write_text(
            "[databases]\n"
            f"* = host=127.0.0.1 port={self.server_port}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            f"unix_socket_dir = {self.home}\n"
            "auth_type = trust\n"
            f"auth_file = {self.home / 'userlist.txt'}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {self.pool_size}\n"
            "max_client_conn = 500\n"
            f"logfile = {self.home / 'pgbouncer.log'}\n"
            "server_reset_query =\n"
            "ignore_startup_parameters = extra_float_digits,options\n"
        )
        for path in self.home.iterdir():
            os.chmod(path, 0o644)
        user = _server_user()
        if user is not None:  # pgbouncer writes its log and socket here
            entry = pwd.getpwnam(user)
            os.chown(self.home, entry.pw_uid, entry.pw_gid)
        self.process = subprocess.Popen(
            [PGBOUNCER, str(config)],
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=(self.home / "stderr.log").open("w"),
            user=user,
            group=pwd.getpwnam(user).pw_gid if user else None,
            extra_groups=[] if user else None,
        )
        wait_until(lambda: self._accepts(), 30, "pgbouncer to accept connections")

    def _accepts(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"pgbouncer exited with {self.process.returncode}: {self.log_tail()}")
        return _port_open(self.port)

    def log_tail(self) -> str:
        texts = [p.read_text(errors="replace")[-2000:] for p in (self.home / "pgbouncer.log", self.home / "stderr.log")]
        return " | ".join(t for t in texts if t) or "no log"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@contextlib.contextmanager
def pgbouncer_before(server_port: int, *, pool_size: int = 10) -> Iterator[PgBouncer]:
    base = Path(tempfile.mkdtemp(prefix="pybatch-pgbouncer-", dir=os.environ.get("PYBATCH_TEST_TMP", "/tmp")))
    bouncer = PgBouncer(server_port, base, pool_size=pool_size)
    try:
        bouncer.start()
        yield bouncer
    finally:
        bouncer.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def primary() -> Iterator[LocalCluster]:
    """A fresh, migrated cluster of its own, for a standby to follow."""
    with temporary_cluster(TEST_SETTINGS, prefix="pybatch-primary-") as cluster:
        connected(cluster.url(), migrate.apply)
        yield cluster
