"""A local Citus cluster: a coordinator and N workers as N+1 embedded clusters on this machine.

Each node is a LocalCluster (pybatch/local.py) with `citus,pg_cron` preloaded (citus first),
listening on 127.0.0.1 on its own port. `CitusCluster.ensure_database(name)` creates the
database on every node, creates the citus extension in each, and registers the workers with
the coordinator: the coordinator's URL is then an ordinary PostgreSQL URL for pybatch.

Debian has no Citus package. When citus.so is missing, `ensure_citus()` builds it with
scripts/build_citus.sh (Citus 13.2.2 from third_party/citus, as root); as a normal user it
raises CitusUnavailable saying what to run. Both exist only in a checkout of pybatch's
repository: installed from a wheel, it says to install Citus's own packages, which a real
deployment installs anyway (docs/citus.md).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import psycopg
from psycopg import sql

from pybatch.errors import LocalClusterError
from pybatch.local import APP_DATABASE, BASE_SETTINGS, SUPERUSER, LocalCluster, default_home, find_bindir

BUILD_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "build_citus.sh"
CITUS_SETTINGS: Mapping[str, str] = {
    **BASE_SETTINGS,
    "shared_preload_libraries": "'citus,pg_cron'",
    # Few shards per table on a small machine (the default is 32): still several per worker.
    "citus.shard_count": "8",
    "max_connections": "300",
    "max_worker_processes": "32",
}


class CitusUnavailable(LocalClusterError):
    """Citus is not installed and cannot be built here (not root, or no source)."""


def citus_library() -> Path:
    """Where citus.so belongs for the server pybatch would start."""
    bindir = find_bindir()
    pg_config = bindir / "pg_config"
    if pg_config.exists():
        out = subprocess.run([str(pg_config), "--pkglibdir"], capture_output=True, text=True, check=False)
        if out.returncode == 0 and out.stdout.strip():
            return Path(out.stdout.strip()) / "citus.so"
    return bindir.parent / "lib" / "citus.so"


def citus_installed() -> bool:
    return citus_library().exists()


CITUS_PACKAGES_HINT = "install Citus's own packages (https://docs.citusdata.com/en/stable/installation/)"


def ensure_citus() -> None:
    """Build and install Citus when it is missing (root only); raise CitusUnavailable otherwise."""
    if citus_installed():
        return
    if not BUILD_SCRIPT.exists():
        # Installed from a wheel: the build script and the Citus source live only in a checkout.
        raise CitusUnavailable(
            f"Citus is not installed ({citus_library()} is missing): {CITUS_PACKAGES_HINT}, "
            "or from a clone of pybatch's repository run `sudo bash scripts/build_citus.sh`"
        )
    if os.geteuid() != 0:
        raise CitusUnavailable(
            f"Citus is not installed ({citus_library()} is missing) and building it needs root: "
            f"run `sudo bash {BUILD_SCRIPT}` (or install Citus's own packages, docs/citus.md)"
        )
    env = dict(os.environ)
    env.setdefault("PG_CONFIG", str(find_bindir() / "pg_config"))
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL, env=env
    )
    if result.returncode != 0 or not citus_installed():
        tail = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()][-3:]
        raise CitusUnavailable(f"building Citus failed ({BUILD_SCRIPT}): {' | '.join(tail) or 'no output'}")


class CitusCluster:
    """A coordinator and `workers` worker nodes under one home directory."""

    def __init__(self, home: Path, *, workers: int = 2, settings: Mapping[str, str] | None = None) -> None:
        if workers < 1:
            raise LocalClusterError(f"a Citus cluster needs at least 1 worker, not {workers}")
        self.home = Path(home)
        merged = {**CITUS_SETTINGS, **(settings or {})}
        self.coordinator = LocalCluster(self.home / "coordinator", settings=merged)
        self.workers = [LocalCluster(self.home / f"worker{n}", settings=merged) for n in range(1, workers + 1)]

    @classmethod
    def default(cls) -> CitusCluster:
        """`pybatch local --citus`: the directory `citus` beside the embedded cluster's (default_home()),
        e.g. /var/lib/pybatch/citus as root; one subdirectory per node (coordinator, worker1, worker2)."""
        return cls(default_home().parent / "citus")

    @property
    def nodes(self) -> list[LocalCluster]:
        return [self.coordinator, *self.workers]

    @property
    def port(self) -> int:
        return self.coordinator.port

    def url(self, dbname: str = APP_DATABASE) -> str:
        if not self.coordinator.is_initialised():
            raise LocalClusterError(
                f"local Citus cluster at {self.home} is not initialised: run `pybatch local start --citus`"
            )
        return self.coordinator.url(dbname)

    def layout_hint(self, dbname: str = APP_DATABASE) -> str | None:
        """What to do before `pybatch migrate`, or None once public.workspace_agents is distributed."""
        with psycopg.connect(self.coordinator.conninfo(dbname), autocommit=True) as conn:
            row = conn.execute(
                "SELECT EXISTS (SELECT FROM pg_dist_partition"
                " WHERE logicalrelid = to_regclass('public.workspace_agents'))"
            ).fetchone()
        if row is not None and row[0]:
            return None
        return (
            "distribute public.workspace_agents before `pybatch migrate` (else pybatch works as on plain "
            "PostgreSQL): SELECT create_distributed_table('public.workspace_agents', 'id'); see docs/citus.md"
        )

    def conninfo(self, dbname: str = APP_DATABASE) -> str:
        return self.coordinator.conninfo(dbname)

    def is_initialised(self) -> bool:
        return all(node.is_initialised() for node in self.nodes)

    def is_running(self) -> bool:
        return all(node.is_running() for node in self.nodes)

    def start(self) -> None:
        """Build Citus if needed (root), start every node, and set up the app database."""
        ensure_citus()
        if os.geteuid() == 0:
            self.home.mkdir(parents=True, exist_ok=True)
            os.chmod(self.home, 0o755)  # the server user walks down to each node's home
        for node in self.nodes:
            node.start()
        self.ensure_database(APP_DATABASE)

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()

    def destroy(self) -> None:
        for node in reversed(self.nodes):
            node.destroy()
        shutil.rmtree(self.home, ignore_errors=True)

    def ensure_database(self, dbname: str) -> None:
        """Create `dbname` on every node with the citus extension, and register the workers."""
        for node in self.nodes:
            node.ensure_database(dbname)
            with psycopg.connect(node.conninfo(dbname), autocommit=True) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS citus")
        with psycopg.connect(self.coordinator.conninfo(dbname), autocommit=True) as conn:
            conn.execute("SELECT citus_set_coordinator_host('127.0.0.1', %s)", (self.coordinator.port,))
            known = {
                int(row[0]) for row in conn.execute("SELECT nodeport FROM pg_dist_node WHERE groupid <> 0").fetchall()
            }
            for worker in self.workers:
                if worker.port not in known:
                    conn.execute("SELECT citus_add_node('127.0.0.1', %s)", (worker.port,))

    def drop_database(self, dbname: str) -> None:
        """Drop `dbname` on every node (Citus's maintenance daemon reconnects: lock it out first)."""
        name = sql.Identifier(dbname)
        for node in self.nodes:
            with psycopg.connect(node.conninfo("postgres"), autocommit=True) as conn:
                if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone():
                    continue
                conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(name))
                for attempt in range(50):
                    try:
                        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
                        break
                    except psycopg.errors.ObjectInUse:
                        if attempt == 49:
                            raise
                        time.sleep(0.1)

    def describe(self) -> str:
        ports = ", ".join(f"worker {n} :{w.port}" for n, w in enumerate(self.workers, start=1))
        return f"Citus coordinator 127.0.0.1:{self.coordinator.port} ({ports}), user {SUPERUSER}"


@contextlib.contextmanager
def temporary_citus_cluster(
    settings: Mapping[str, str] | None = None,
    *,
    workers: int = 2,
    prefix: str = "pybatch-citus-",
) -> Iterator[CitusCluster]:
    """A started Citus cluster in a fresh temporary directory, destroyed afterwards (tests, benchmarks)."""
    ensure_citus()
    base = Path(tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("PYBATCH_TEST_TMP", "/tmp")))
    os.chmod(base, 0o755)
    cluster = CitusCluster(base / "citus", workers=workers, settings=settings)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)
