"""pg_cron after a failover (pg_cron 1.6, built by `make test`): the job replicated to the
promoted standby runs there, and a job that names the old node is named by `cron status` and
`doctor` and repaired by `cron install` (docs/ha.md#pg_cron-after-a-failover)."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from pybatch import migrate
from pybatch.local import LocalCluster, temporary_cluster
from pybatch.schedule import cron
from tests.conftest import TEST_SETTINGS, run_pybatch
from tests.failover_run import Timing, run_failover
from tests.ha_fixtures import kill_postmaster, promote, replay_caught_up, standby_of, wait_until
from tests.helpers import connected
from tests.integration.test_cron_seconds import cron16_bindir

pytestmark = pytest.mark.slow


def _primary(monkeypatch: pytest.MonkeyPatch, settings: dict[str, str]) -> Iterator[LocalCluster]:
    monkeypatch.setenv("PYBATCH_PG_BINDIR", str(cron16_bindir()))
    with temporary_cluster({**TEST_SETTINGS, **settings}, prefix="pybatch-cron-primary-") as cluster:
        connected(cluster.url(), migrate.apply)
        yield cluster


@pytest.fixture
def libpq_primary(monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalCluster]:
    """pg_cron's default: each run connects over libpq to the job's nodename:nodeport."""
    yield from _primary(monkeypatch, {})


@pytest.fixture
def workers_primary(monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalCluster]:
    """cron.use_background_workers = on: runs start as background workers, with no connection."""
    yield from _primary(monkeypatch, {"cron.use_background_workers": "on", "max_worker_processes": "32"})


def _successful_flushes_since(conn: psycopg.Connection, since: object) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pybatch.flush_log WHERE error IS NULL AND started_at > %s", (since,)
    ).fetchone()
    return int(row[0]) if row else 0


def test_with_background_workers_the_replicated_job_flushes_on_the_promoted_node(
    workers_primary: LocalCluster,
) -> None:
    with standby_of(workers_primary) as standby:
        figures = run_failover(
            workers_primary, standby, kind="failover", agents=200, flusher="pg_cron", timing=Timing(after=14)
        )
        print(figures.as_dict())
        assert figures.first_flush_after_promotion_s is not None, figures
        # Within two flush intervals of the promotion, with slack for a loaded 2-core machine.
        assert figures.first_flush_after_promotion_s <= 2 * figures.flush_interval_s + 3, figures
        assert figures.acknowledged_beats_lost == 0 and figures.agents_over_timeout_max == 0, figures
        connected(standby.url(), cron.remove)


def test_a_job_naming_the_old_node_is_named_and_repaired_by_cron_install(libpq_primary: LocalCluster) -> None:
    connected(libpq_primary.url(), cron.install, 1)
    with psycopg.connect(libpq_primary.url(), autocommit=True) as conn:
        wait_until(lambda: _successful_flushes_since(conn, "-infinity") >= 2, 30, "the job to flush on the primary")
    with standby_of(libpq_primary) as standby:
        replay_caught_up(libpq_primary, standby)
        kill_postmaster(libpq_primary)
        promote(standby)
        dsn = standby.url()
        status = run_pybatch("--dsn", dsn, "cron", "status")
        assert status.returncode == 1 and "Traceback" not in status.stderr, status.stdout + status.stderr
        error = status.stderr.strip().splitlines()
        assert len(error) == 1 and f":{libpq_primary.port}, but this server is" in error[0], error
        assert "pg_hba" not in error[0] and "`pybatch cron install`" in error[0], error
        report = run_pybatch("--dsn", dsn, "doctor")
        line = next(line for line in report.stdout.splitlines() if "cron_job:" in line)
        assert line.startswith("FAIL") and "but this server is" in line and "pg_hba" not in line, line

        installed = run_pybatch("--dsn", dsn, "cron", "install", "--interval", "1s")
        assert installed.returncode == 0, installed.stderr
        with psycopg.connect(dsn, autocommit=True) as conn:
            now = conn.execute("SELECT now()").fetchone()
            assert now is not None
            wait_until(lambda: _successful_flushes_since(conn, now[0]) >= 2, 30, "the repaired job to flush")
        again = run_pybatch("--dsn", dsn, "cron", "status")
        assert again.returncode == 0, again.stdout + again.stderr
        connected(dsn, cron.remove)
