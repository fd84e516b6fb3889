"""The pg_cron 1.5+ path: a 'N seconds' job running CALL pybatch.flush_in_passes().

Debian 12 ships pg_cron 1.4, so `make test` builds pg_cron 1.6 into a private copy of the
server first (scripts/build_vendor.sh); this test starts its own cluster from that copy.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from pybatch import migrate
from pybatch.local import LocalCluster, find_bindir, temporary_cluster
from pybatch.schedule import cron
from tests.conftest import TEST_SETTINGS
from tests.helpers import connected, last_connected, make_agents, stage

CRON16_HOME = Path(os.environ.get("PYBATCH_CRON16_HOME", "/var/tmp/pg-cron16"))


def pg_cron_default_version(bindir: Path) -> tuple[int, int] | None:
    """The pg_cron version the server in `bindir` would create, from its pg_cron.control (None: none)."""
    result = subprocess.run([str(bindir / "pg_config"), "--sharedir"], capture_output=True, text=True, check=False)
    sharedir = Path(result.stdout.strip()) if result.returncode == 0 else bindir.parent / "share"
    control = sharedir / "extension" / "pg_cron.control"
    if not control.exists():
        return None
    found = re.search(r"default_version\s*=\s*'(\d+)\.(\d+)", control.read_text())
    return (int(found.group(1)), int(found.group(2))) if found else None


def cron16_bindir() -> Path:
    """Server binaries with pg_cron 1.5+: the test server's own when it has it (the builds of
    scripts/install_pg_version.sh), else the private copy with pg_cron 1.6 (the same layout as
    the system's, built by scripts/build_vendor.sh: Debian 12's own pg_cron is 1.4)."""
    own = find_bindir()
    if (pg_cron_default_version(own) or (0, 0)) >= cron.SECONDS_SCHEDULES_SINCE:
        return own
    bindir = CRON16_HOME / str(own).lstrip("/")
    if not (bindir / "postgres").exists():
        pytest.fail(
            f"pg_cron 1.6 is not built in {CRON16_HOME}: run `make test` (as root it builds it with "
            "third_party/pg_cron/build.sh), or that script yourself"
        )
    return bindir


@pytest.fixture
def cron16_cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalCluster]:
    monkeypatch.setenv("PYBATCH_PG_BINDIR", str(cron16_bindir()))
    with temporary_cluster(TEST_SETTINGS, prefix="pybatch-cron16-") as cluster:
        connected(cluster.url(), migrate.apply)
        yield cluster


def test_a_seconds_job_flushes_every_few_seconds_in_committed_passes(cron16_cluster: LocalCluster) -> None:
    dsn = cron16_cluster.url()
    job = connected(dsn, cron.install, 2)
    try:
        with psycopg.connect(psycopg.conninfo.make_conninfo(dsn, dbname="postgres"), autocommit=True) as postgres:
            version = postgres.execute("SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'").fetchone()
        assert version is not None and version[0] >= "1.5", version
        assert job.schedule == "2 seconds" and job.command == cron.FLUSH_COMMAND
        with psycopg.connect(dsn, autocommit=True) as conn:
            agents = make_agents(conn, 300)
            at = datetime.now(UTC) - timedelta(seconds=1)
            stage(conn, agents, at)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                row = conn.execute(
                    "SELECT count(*), sum(passes), sum(agents_updated) FROM pybatch.flush_log WHERE error IS NULL"
                ).fetchone()
                assert row is not None
                if row[0] >= 3 and (row[2] or 0) >= 300:
                    break
                time.sleep(0.5)
            assert row is not None and row[0] >= 3 and row[2] == 300 and (row[1] or 0) >= 1, row
            assert set(last_connected(conn, agents).values()) == {at}
            starts = [r[0] for r in conn.execute("SELECT started_at FROM pybatch.flush_log ORDER BY id")]
            assert all(1 <= (b - a).total_seconds() <= 4 for a, b in itertools.pairwise(starts)), starts
    finally:
        connected(dsn, cron.remove)
