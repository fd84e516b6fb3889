"""The embedded local cluster: one directory holding a PostgreSQL data directory,
its socket, its log and its port, with pg_cron preloaded, listening on 127.0.0.1.

initdb and pg_ctl refuse to run as root, so as root the server runs as an
unprivileged system user (`postgres` by default, PYBATCH_LOCAL_USER to change)
from a directory that user owns (a checkout under /root is out of its reach).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from pybatch.errors import LocalClusterError

log = logging.getLogger(__name__)

SUPERUSER = "postgres"
APP_DATABASE = "pybatch"
# Settings every embedded cluster gets. The cron job connects over the socket
# directory (trusted by initdb --auth=trust), so pg_hba needs no TCP rule for it.
BASE_SETTINGS: Mapping[str, str] = {
    "listen_addresses": "'127.0.0.1'",
    "shared_preload_libraries": "'pg_cron'",
    "cron.database_name": "'postgres'",
    "max_connections": "200",
}


def find_bindir() -> Path:
    """The server binaries: PYBATCH_PG_BINDIR, `pg_config --bindir`, or the newest /usr/lib/postgresql/N/bin."""
    override = os.environ.get("PYBATCH_PG_BINDIR")
    candidates: list[Path] = [Path(override)] if override else []
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if out.returncode == 0:
            candidates.append(Path(out.stdout.strip()))
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: _major(p.parent.name), reverse=True)
    candidates.extend(versions)
    for path in candidates:
        if (path / "initdb").exists() and (path / "pg_ctl").exists():
            return path
    raise LocalClusterError(
        "PostgreSQL server binaries not found (no initdb/pg_ctl): install them with "
        "`apt-get install postgresql postgresql-<major>-cron`, or set PYBATCH_PG_BINDIR"
    )


def _major(name: str) -> int:
    return int(name) if name.isdigit() else 0


def default_home() -> Path:
    """PYBATCH_HOME, else /var/lib/pybatch/cluster as root, else ~/.local/share/pybatch/cluster."""
    if os.environ.get("PYBATCH_HOME"):
        return Path(os.environ["PYBATCH_HOME"]).resolve()
    if os.geteuid() == 0:
        return Path("/var/lib/pybatch/cluster")
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "pybatch" / "cluster"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalCluster:
    """A PostgreSQL cluster in one directory, started and stopped by pybatch."""

    def __init__(
        self,
        home: Path,
        *,
        settings: Mapping[str, str] | None = None,
        server_user: str | None = None,
    ) -> None:
        self.home = Path(home)
        self.settings = dict(settings or {})
        self._server_user = server_user

    @classmethod
    def default(cls) -> LocalCluster:
        return cls(default_home())

    # -- paths and identity -------------------------------------------------
    @property
    def datadir(self) -> Path:
        return self.home / "data"

    @property
    def logfile(self) -> Path:
        return self.home / "server.log"

    @property
    def port(self) -> int:
        try:
            return int((self.home / "port").read_text().strip())
        except (OSError, ValueError):
            raise LocalClusterError(
                f"local cluster at {self.home} is not initialised: run `pybatch local start`"
            ) from None

    @property
    def server_user(self) -> str | None:
        """The user the server runs as: None means the current user (not root)."""
        if os.geteuid() != 0:
            return None
        name = self._server_user or os.environ.get("PYBATCH_LOCAL_USER") or "postgres"
        try:
            pwd.getpwnam(name)
        except KeyError:
            raise LocalClusterError(
                f"running as root, the server needs an unprivileged user, and {name!r} does not exist: "
                f"create it (`useradd --system {name}`) or set PYBATCH_LOCAL_USER"
            ) from None
        return name

    def url(self, dbname: str = APP_DATABASE) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def conninfo(self, dbname: str = APP_DATABASE) -> str:
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname={dbname}"

    # -- lifecycle ------------------------------------------------------------
    def is_initialised(self) -> bool:
        return (self.datadir / "PG_VERSION").exists()

    def is_running(self) -> bool:
        if not self.is_initialised():
            return False
        result = self._pg_ctl("status", check=False)
        return result.returncode == 0

    def init(self) -> None:
        """initdb, once. Idempotent."""
        if self.is_initialised():
            return
        bindir = find_bindir()
        self._make_home()
        port = _free_port()
        result = self._run(
            [
                str(bindir / "initdb"),
                "-D",
                str(self.datadir),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                # Only options every supported major has (--no-instructions is 14+).
            ],
        )
        if result.returncode != 0:
            raise LocalClusterError(f"initdb failed in {self.datadir}: {_errors(result.stdout + result.stderr)}")
        settings = {
            **BASE_SETTINGS,
            "port": str(port),
            "unix_socket_directories": f"'{self.home}'",
            "cron.host": f"'{self.home}'",
            **self.settings,
        }
        with (self.datadir / "postgresql.conf").open("a") as conf:
            conf.write("\n# --- pybatch embedded cluster ---\n")
            for key, value in settings.items():
                conf.write(f"{key} = {value}\n")
        (self.home / "port").write_text(f"{port}\n")
        log.info("initialised local cluster", extra={"home": str(self.home), "port": port})

    def start(self) -> None:
        """Initialise if needed, start if stopped, and make sure the app database exists."""
        with self._lock():
            self.init()
            if not self.is_running():
                result = self._pg_ctl("start", "-w", "-t", "60", "-l", str(self.logfile), check=False)
                if result.returncode != 0:
                    raise LocalClusterError(
                        f"could not start the local cluster in {self.home}: {self._log_tail(result)}"
                    )
                log.info("started local cluster", extra={"home": str(self.home), "port": self.port})
            self.ensure_database(APP_DATABASE)

    def stop(self) -> bool:
        """Stop the server if it runs; True when it was running."""
        with self._lock():
            if not self.is_running():
                return False
            result = self._pg_ctl("stop", "-m", "fast", "-w", "-t", "60", check=False)
            if result.returncode != 0:
                raise LocalClusterError(f"could not stop the local cluster in {self.home}: {self._log_tail(result)}")
            return True

    def port_in_use(self) -> bool:
        """Whether something accepts TCP connections on this cluster's port (127.0.0.1). When the
        cluster is stopped, that is another process: an orphan server whose data directory or
        postmaster.pid was removed, or a program that took the port since."""
        try:
            port = self.port
        except LocalClusterError:
            return False
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            return sock.connect_ex(("127.0.0.1", port)) == 0

    def ensure_running(self, *, notice: bool = False) -> str:
        """Start the cluster if needed and return the app database URL."""
        self.start()
        url = self.url()
        if notice:
            print(
                f"pybatch: no database configured, using the embedded cluster in {self.home} ({url})", file=sys.stderr
            )
        return url

    def destroy(self) -> None:
        """Stop the cluster and delete its directory."""
        with contextlib.suppress(LocalClusterError):
            self.stop()
        shutil.rmtree(self.home, ignore_errors=True)

    # -- helpers ------------------------------------------------------------------
    def _make_home(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        user = self.server_user
        if user is not None:
            entry = pwd.getpwnam(user)
            os.chown(self.home, entry.pw_uid, entry.pw_gid)
            # The server user must be able to walk down to its home.
            for parent in self.home.parents:
                if parent == Path("/") or not parent.exists():
                    break
                mode = parent.stat().st_mode
                if not mode & 0o001:
                    raise LocalClusterError(
                        f"{parent} is not searchable by user {user!r}; "
                        f"set PYBATCH_HOME to a directory outside it (e.g. /var/lib/pybatch/cluster)"
                    )
        os.chmod(self.home, 0o700)

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """Serialise init/start/stop between processes."""
        self.home.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.home.parent / f".{self.home.name}.lock"
        with lock_path.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = self._run([str(find_bindir() / "pg_ctl"), "-D", str(self.datadir), *args])
        if check and result.returncode != 0:
            raise LocalClusterError(f"pg_ctl {args[0]} failed: {_errors(result.stdout + result.stderr)}")
        return result

    def _run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        user = self.server_user
        if user is not None:
            argv = ["runuser", "-u", user, "--", *argv]
        # cwd "/": the server user may not be able to enter the caller's directory.
        return subprocess.run(argv, cwd="/", capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)

    def ensure_database(self, dbname: str) -> None:
        """Create database `dbname` in this (running) cluster unless it exists."""
        import psycopg  # imported here: `pybatch local status` and `stop` need no driver
        from psycopg import sql

        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(self.conninfo("postgres"), autocommit=True, connect_timeout=5) as conn:
                    exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
                    if not exists:
                        with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
                    return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise LocalClusterError(
                        f"local cluster on port {self.port} does not accept connections: {exc}"
                    ) from None
                time.sleep(0.2)

    def _log_tail(self, result: subprocess.CompletedProcess[str]) -> str:
        """The server's own reason: the last FATAL/PANIC/ERROR of its log (a line after it, such as
        "database system is shut down", says less), else pg_ctl's own error lines."""
        try:
            lines = [line for line in self.logfile.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            lines = []
        reasons = [line for line in lines if _SERVER_ERROR.search(line)]
        if reasons:
            return reasons[-1].strip()
        return _errors(result.stdout + result.stderr) if (result.stdout + result.stderr).strip() else "empty server log"


@contextlib.contextmanager
def temporary_cluster(
    settings: Mapping[str, str] | None = None,
    *,
    prefix: str = "pybatch-",
) -> Iterator[LocalCluster]:
    """A started cluster in a fresh temporary directory, destroyed afterwards (tests, benchmarks).

    PYBATCH_TEST_TMP picks the parent directory (default /tmp). The directory is made
    world-searchable because, as root, the server runs as another user who must reach it.
    """
    base = Path(tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("PYBATCH_TEST_TMP", "/tmp")))
    os.chmod(base, 0o755)
    cluster = LocalCluster(base / "cluster", settings=settings)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)


_SERVER_ERROR = re.compile(r"\b(FATAL|PANIC|ERROR):")
# initdb's and pg_ctl's own error lines ("initdb: error: ...", "unrecognized option", "invalid ...").
_TOOL_ERROR = re.compile(r"error|unrecognized|invalid|could not|cannot|not found|FATAL|PANIC", re.IGNORECASE)


def _errors(text: str) -> str:
    """initdb's or pg_ctl's own error message, on one line: every line that states an error (not
    their "hint" or progress lines), else the last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return "no output"
    errors = [line for line in lines if _TOOL_ERROR.search(line) and ": hint:" not in line]
    return "; ".join(errors) if errors else lines[-1]
