"""`pybatch demo` as a subprocess: it refuses, before any change, a database not meant for it
(leaving no schema, no migration table and no pg_cron job behind), and after a run the next
steps it prints, and those the README shows, work as written."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import psycopg
import pytest
from pytest_postgresql.janitor import DatabaseJanitor

from pybatch.local import SUPERUSER, LocalCluster, default_home
from tests.acceptance.test_readme import readme_blocks
from tests.conftest import run_pybatch

REPO = Path(__file__).resolve().parents[2]
USER_AGENT = "4f1c2d3e-0000-4000-8000-000000000001"


def _give_it_a_user_table(dsn: str) -> None:
    """What a real database looks like to the demo: an application's workspace_agents with a row."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE public.workspace_agents (id uuid PRIMARY KEY, created_at timestamptz NOT NULL, "
            "updated_at timestamptz NOT NULL, name text)"
        )
        conn.execute("INSERT INTO public.workspace_agents VALUES (%s, now(), now(), 'prod agent')", (USER_AGENT,))


def _snapshot(cluster: LocalCluster, dsn: str) -> tuple[list[Any], ...]:
    """Everything the demo could have left behind in this database, and its pg_cron jobs."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        dbname = conn.execute("SELECT current_database()").fetchone()
        relations = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') ORDER BY 1, 2"
        ).fetchall()
        schemas = conn.execute("SELECT nspname FROM pg_namespace ORDER BY 1").fetchall()
        rows = conn.execute("SELECT id::text, name FROM public.workspace_agents ORDER BY id").fetchall()
        stats = conn.execute(
            "SELECT n_tup_upd, n_tup_del FROM pg_stat_user_tables WHERE relname = 'workspace_agents'"
        ).fetchall()
    assert dbname is not None
    with psycopg.connect(cluster.conninfo("postgres"), autocommit=True) as conn:
        has_cron = conn.execute("SELECT to_regclass('cron.job') IS NOT NULL").fetchone() == (True,)
        jobs = (
            conn.execute("SELECT jobname FROM cron.job WHERE database = %s", (dbname[0],)).fetchall()
            if has_cron
            else []
        )
    return relations, schemas, rows, stats, jobs


def _assert_refused(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if line.startswith("pybatch: ")]
    assert len(errors) == 1 and fragment in errors[0] and "nothing was changed" in errors[0], result.stderr
    assert "takes about" not in result.stderr  # no estimate of a run that does not happen


@pytest.mark.parametrize("how", ["PYBATCH_DSN", "--dsn"])
def test_demo_refuses_a_real_database_and_leaves_nothing_behind(
    pg_cluster: LocalCluster,
    empty_dsn: str,
    how: str,
) -> None:
    _give_it_a_user_table(empty_dsn)
    before = _snapshot(pg_cluster, empty_dsn)
    args = ["--dsn", empty_dsn, "demo"] if how == "--dsn" else ["demo"]
    env = {"PYBATCH_DSN": empty_dsn} if how == "PYBATCH_DSN" else {}
    result = run_pybatch(*args, "--agents", "50", "--seconds", "10s", "--warmup", "0s", env=env, timeout=120)
    _assert_refused(result, "named for it")
    after = _snapshot(pg_cluster, empty_dsn)
    assert after == before
    relations, schemas, rows, _, jobs = after
    assert ("pybatch",) not in schemas and jobs == []
    assert not [r for r in relations if "yoyo" in str(r[1])]
    assert rows == [(USER_AGENT, "prod agent")]


@pytest.fixture
def demo_named_dsn(pg_cluster: LocalCluster) -> Iterator[str]:
    name = f"t_demo_{uuid.uuid4().hex[:12]}"
    janitor = DatabaseJanitor(user=SUPERUSER, host="127.0.0.1", port=pg_cluster.port, dbname=name)
    janitor.init()
    try:
        yield pg_cluster.conninfo(name)
    finally:
        janitor.drop()


def test_demo_refuses_a_demo_database_holding_other_agents(pg_cluster: LocalCluster, demo_named_dsn: str) -> None:
    _give_it_a_user_table(demo_named_dsn)
    before = _snapshot(pg_cluster, demo_named_dsn)
    result = run_pybatch(
        "demo", "--agents", "50", "--seconds", "10s", "--warmup", "0s", env={"PYBATCH_DSN": demo_named_dsn}, timeout=120
    )
    _assert_refused(result, "holds 1 rows that are not the demo's agents")
    assert _snapshot(pg_cluster, demo_named_dsn) == before


def _shell(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", command],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.slow
def test_demo_then_the_next_steps_it_prints_and_the_readme_shows(tmp_path: Path) -> None:
    home = Path(tempfile.mkdtemp(prefix="pybatch-demo-", dir=os.environ.get("PYBATCH_TEST_TMP", "/tmp")))
    os.chmod(home, 0o755)
    cluster = LocalCluster(home / "cluster")
    try:
        result = run_pybatch(
            "demo",
            "--agents",
            "300",
            "--seconds",
            "10s",
            "--warmup",
            "2s",
            env={"PYBATCH_HOME": str(cluster.home)},
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
        assert cluster.is_running()
        out = result.stdout
        assert "statements/s into workspace_agents" in out and "row versions/s into workspace_agents" in out
        assert "WAL bytes per heartbeat" in out and "server CPU µs per heartbeat" in out
        assert "[direct] measuring" in result.stderr and "[buffered] measuring" in result.stderr
        with psycopg.connect(cluster.url(), autocommit=True) as conn:
            flushed = conn.execute("SELECT count(*) FROM pybatch.flush_log WHERE agents_updated > 0").fetchone()
            connected = conn.execute(
                "SELECT count(*) FROM public.workspace_agents WHERE last_connected_at IS NOT NULL"
            ).fetchone()
        assert flushed is not None and flushed[0] > 0
        # Only the agents that beat in the last strategy's short run and were flushed by the
        # pg_cron job before the demo returned are connected: some, never all for certain.
        assert connected is not None and 0 < connected[0] <= 300

        # The environment of a user who just ran `make demo`: nothing configured, the venv's
        # bin on PATH as after `source .venv/bin/activate`.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYBATCH_", "PG"))}
        env["PYBATCH_HOME"] = str(cluster.home)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"

        steps = out.split("Look inside:", 1)[1].splitlines()
        commands = [re.sub(r"\s+#.*$", "", line).strip() for line in steps if line.startswith("  ")]
        commands = [c for c in commands if c and not c.startswith("(")]
        assert commands and all("pybatch" in c for c in commands), out
        assert all("--dsn" not in c for c in commands), out  # plain commands read the demo's database
        for command in commands:
            ran = _shell(command, env)
            assert ran.returncode == 0, f"{command!r} exited {ran.returncode}: {ran.stderr}"
            assert "Traceback" not in ran.stderr

        # `pybatch status` exits 0 only when the last flush is recent: this is the demo's database.
        status = _shell("pybatch status", env)
        assert status.returncode == 0, status.stdout + status.stderr

        # The README's commands right after `make demo`, as written.
        (after_demo,) = readme_blocks("after-demo")
        ran = _shell(after_demo, env)
        assert ran.returncode == 0, f"README after-demo block failed: {ran.stdout}\n{ran.stderr}"
        assert "pybatch-flush-pybatch" in ran.stdout  # the cron job the README tells how to remove
        # The README's cleanup, as written, except that rm -rf must not hit this machine's real
        # cluster: check that it names the default PYBATCH_HOME's parent instead of running it.
        (cleanup,) = readme_blocks("cleanup")
        removals = [c for c in cleanup.splitlines() if c.startswith("rm ")]
        assert [re.sub(r"\s+#.*$", "", c).strip() for c in removals] == ["rm -rf ~/.local/share/pybatch"]
        for command in cleanup.splitlines():
            command = re.sub(r"\s+#.*$", "", command).strip()
            if command and not command.startswith("rm "):
                ran = _shell(command, env)
                assert ran.returncode == 0, f"{command!r}: {ran.stderr}"
        assert not cluster.is_running()
        # The paths the cleanup names are where pybatch.local keeps a cluster by default.
        env_without_home = {k: v for k, v in os.environ.items() if k not in ("PYBATCH_HOME", "XDG_DATA_HOME")}
        with mock.patch.dict(os.environ, env_without_home, clear=True), mock.patch("os.geteuid", return_value=1000):
            user_home = default_home()
        with mock.patch.dict(os.environ, env_without_home, clear=True), mock.patch("os.geteuid", return_value=0):
            root_home = default_home()
        assert user_home == Path.home() / ".local/share/pybatch/cluster"
        assert root_home == Path("/var/lib/pybatch/cluster") and "/var/lib/pybatch" in cleanup
    finally:
        cluster.destroy()
        shutil.rmtree(home, ignore_errors=True)
