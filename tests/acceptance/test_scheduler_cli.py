"""`pybatch cron install|remove|status` and `pybatch scheduler` as a user runs them (subprocesses)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import psycopg
import pytest

from pybatch.schedule import cron
from tests.conftest import run_pybatch
from tests.helpers import connected


@pytest.fixture
def cron_dsn(dsn: str) -> Iterator[str]:
    """A migrated database whose pg_cron jobs are removed at teardown (jobs are server-wide)."""
    yield dsn
    connected(dsn, cron.remove)


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith(("usage:", " "))]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_cron_install_status_remove(cron_dsn: str) -> None:
    database = psycopg.conninfo.conninfo_to_dict(cron_dsn)["dbname"]
    # Agents that time out after 2 minutes, so 15-20 s flushes fit the staleness budget.
    relaxed = run_pybatch("--dsn", cron_dsn, "config", "set", "inactive_timeout", "2m")
    assert relaxed.returncode == 0, relaxed.stderr
    installed = run_pybatch("--dsn", cron_dsn, "cron", "install", "--interval", "15s", "--force-loop")
    assert installed.returncode == 0, installed.stderr
    assert f"installed pybatch-flush-{database}" in installed.stdout and "loop" in installed.stdout
    assert "first run: at " in installed.stdout and "UTC, in " in installed.stdout, installed.stdout

    again = run_pybatch(
        "--dsn",
        cron_dsn,
        "cron",
        "install",
        env={"PYBATCH_INTERVAL": "20s"},
    )
    assert again.returncode == 0, again.stderr
    assert "every 20s" in again.stdout

    status = run_pybatch("--dsn", cron_dsn, "cron", "status")
    assert status.returncode == 0, status.stderr
    assert f"job pybatch-flush-{database}" in status.stdout
    assert "CALL pybatch.flush_loop('20 seconds')" in status.stdout
    assert "configured interval 20s" in status.stdout
    assert "last successful flush: never" in status.stdout

    as_json = run_pybatch("--dsn", cron_dsn, "cron", "status", "--json")
    assert as_json.returncode == 0, as_json.stderr
    document = json.loads(as_json.stdout)
    assert (document["job"]["name"], document["job"]["mode"]) == (f"pybatch-flush-{database}", "loop")
    assert document["configured_interval"] == 20 and document["error"] is None

    removed = run_pybatch("--dsn", cron_dsn, "cron", "remove")
    assert (removed.returncode, removed.stdout.strip()) == (0, "removed 2 pg_cron job(s)")
    after = run_pybatch("--dsn", cron_dsn, "cron", "status")
    assert after.returncode == 3
    assert "no pg_cron job" in after.stdout


def test_cron_install_uses_the_stored_interval_by_default(cron_dsn: str) -> None:
    with psycopg.connect(cron_dsn, autocommit=True) as conn:
        conn.execute("UPDATE pybatch.settings SET flush_interval = '7 seconds'")
    result = run_pybatch("--dsn", cron_dsn, "cron", "install", "--force-loop")
    assert result.returncode == 0, result.stderr
    assert "every 7s" in result.stdout


def test_cron_install_rejects_an_interval_pg_cron_cannot_express(cron_dsn: str) -> None:
    result = run_pybatch("--dsn", cron_dsn, "cron", "install", "--interval", "90s")
    assert result.returncode == 1
    line = one_error_line(result.stderr)
    assert "90s cannot be expressed by pg_cron" in line and "pybatch scheduler" in line


def test_rollback_removes_the_jobs(cron_dsn: str) -> None:
    database = psycopg.conninfo.conninfo_to_dict(cron_dsn)["dbname"]
    installed = run_pybatch("--dsn", cron_dsn, "cron", "install", "--interval", "10s")
    assert installed.returncode == 0, installed.stderr
    # 10 s leaves less than the staleness margin: a warning, in the same form as an error line.
    warnings = [line for line in installed.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and warnings[0].startswith("pybatch: warning: flush interval leaves little margin")
    rolled = run_pybatch("--dsn", cron_dsn, "migrate", "--rollback")
    assert rolled.returncode == 0, rolled.stderr
    with psycopg.connect(psycopg.conninfo.make_conninfo(cron_dsn, dbname="postgres")) as conn:
        jobs = conn.execute("SELECT count(*) FROM cron.job WHERE jobname LIKE %s", (f"%-{database}",)).fetchone()
    assert jobs == (0,)
    # It says what it removed and what to run to put it back.
    assert f"pybatch-flush-{database}" in rolled.stdout, rolled.stdout
    assert "to restore them:" in rolled.stdout and "migrate`, then `" in rolled.stdout
    assert "cron install --interval 10s`" in rolled.stdout
    # migrate then mentions that nothing schedules the flush.
    migrated = run_pybatch("--dsn", cron_dsn, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert "nothing schedules the flush in this database yet" in migrated.stdout, migrated.stdout
    assert run_pybatch("--dsn", cron_dsn, "cron", "install", "--interval", "10s").returncode == 0


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        (["scheduler", "--interval", "soon"], {}, "--interval"),
        (["scheduler"], {"PYBATCH_INTERVAL": "soon"}, "PYBATCH_INTERVAL"),
        (["scheduler", "--metrics-port", "99999"], {}, "port"),
        (["scheduler"], {"PYBATCH_METRICS_PORT": "http"}, "PYBATCH_METRICS_PORT"),
        (["scheduler", "--lanes", "0"], {}, "--lanes"),
        (["scheduler", "--lanes", "two"], {}, "'two' is not a whole number"),
        (["flush", "--lanes", "65"], {}, "'65' is out of range (1 to 64)"),
        (["flush"], {"PYBATCH_LANES": "0"}, "PYBATCH_LANES"),
        (["scheduler"], {"PYBATCH_LANES": "65"}, "PYBATCH_LANES"),
        (["cron", "install", "--interval", "-1s"], {}, "--interval"),
    ],
)
def test_bad_flags_are_one_line_usage_errors(dsn: str, argv: list[str], env: dict[str, str], needle: str) -> None:
    result = run_pybatch("--dsn", dsn, *argv, env=env, timeout=30)
    assert result.returncode == 2
    assert needle in one_error_line(result.stderr)


def test_help_names_the_environment_variables() -> None:
    scheduler = run_pybatch("scheduler", "--help")
    assert all(f"PYBATCH_{name}" in scheduler.stdout for name in ("INTERVAL", "METRICS_PORT", "LANES"))
    install = run_pybatch("cron", "install", "--help")
    assert "PYBATCH_INTERVAL" in install.stdout
