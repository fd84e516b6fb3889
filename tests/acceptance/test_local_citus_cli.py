"""`pybatch local start|stop|status|url --citus`: a coordinator and 2 workers as 3 local instances,
their state in one directory; the user distributes public.workspace_agents, then `pybatch migrate`."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pybatch.cli import main
from tests.citus_fixtures import AGENTS_DDL
from tests.conftest import run_pybatch

pytestmark = pytest.mark.citus


@pytest.fixture
def home() -> Iterator[dict[str, str]]:
    """PYBATCH_HOME for a throwaway embedded cluster; the Citus cluster lives beside it in `citus`."""
    base = Path(tempfile.mkdtemp(prefix="pybatch-citus-home-", dir=os.environ.get("PYBATCH_TEST_TMP", "/tmp")))
    os.chmod(base, 0o755)
    env = {"PYBATCH_HOME": str(base / "cluster")}
    try:
        yield env
    finally:
        run_pybatch("local", "stop", "--citus", env=env)
        shutil.rmtree(base, ignore_errors=True)


def test_local_citus_start_migrate_status_stop(home: dict[str, str]) -> None:
    citus_home = Path(home["PYBATCH_HOME"]).parent / "citus"
    before = run_pybatch("local", "status", "--citus", env=home)
    assert before.returncode == 3 and before.stdout.startswith("not initialised"), before
    assert "local start --citus" in run_pybatch("local", "url", "--citus", env=home).stderr

    started = run_pybatch("local", "start", "--citus", env=home, timeout=300)
    assert started.returncode == 0, started.stderr
    url = started.stdout.strip()
    assert url.startswith("postgresql://postgres@127.0.0.1:") and url.endswith("/pybatch")
    assert "create_distributed_table('public.workspace_agents', 'id')" in started.stderr
    assert sorted(p.name for p in citus_home.iterdir() if p.is_dir()) == ["coordinator", "worker1", "worker2"]

    with psycopg.connect(url, autocommit=True) as conn:
        workers = conn.execute("SELECT count(*) FROM pg_dist_node WHERE groupid <> 0 AND isactive").fetchone()
        assert workers == (2,)
        conn.execute(AGENTS_DDL)
        conn.execute("SELECT create_distributed_table('public.workspace_agents', 'id')")
    migrated = run_pybatch("migrate", "--dsn", url)
    assert migrated.returncode == 0, migrated.stderr
    agent = uuid.uuid4()
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT pybatch.citus_distributed()").fetchone() == (True,)
        conn.execute("INSERT INTO public.workspace_agents (id) VALUES (%s)", (agent,))
        conn.execute("INSERT INTO pybatch.heartbeats (agent_id) VALUES (%s)", (agent,))
    flushed = run_pybatch("flush", "--dsn", url)
    assert flushed.returncode == 0, flushed.stderr

    status = run_pybatch("local", "status", "--citus", env=home)
    assert status.returncode == 0 and status.stdout.startswith("running") and url in status.stdout, status
    assert status.stdout.count("running") == 4  # the cluster and its 3 nodes
    assert run_pybatch("local", "url", "--citus", env=home).stdout.strip() == url
    # A second start is a no-op that prints the same URL, with no layout hint any more.
    again = run_pybatch("local", "start", "--citus", env=home, timeout=300)
    assert again.returncode == 0 and again.stdout.strip() == url and "create_distributed_table" not in again.stderr

    assert run_pybatch("local", "stop", "--citus", env=home).returncode == 0
    stopped = run_pybatch("local", "status", "--citus", env=home)
    assert stopped.returncode == 3 and stopped.stdout.startswith("stopped"), stopped
    # Restarted, the same ports and the same data: workers stay registered, the agent stays merged.
    restarted = run_pybatch("local", "start", "--citus", env=home, timeout=300)
    assert restarted.returncode == 0 and restarted.stdout.strip() == url, restarted.stderr
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT last_connected_at IS NOT NULL FROM public.workspace_agents WHERE id = %s", (agent,)
        ).fetchone()
        assert row == (True,)
    assert run_pybatch("local", "stop", "--citus", env=home).returncode == 0


def test_local_citus_as_a_normal_user_without_citus_says_what_to_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No citus.so for the server found (a bindir with initdb and pg_ctl only) and not root: one line
    naming the build script, exit 1, and no directory left behind."""
    from pybatch.local import find_bindir

    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("initdb", "pg_ctl"):
        (bindir / tool).symlink_to(find_bindir() / tool)
    monkeypatch.setenv("PYBATCH_PG_BINDIR", str(bindir))
    monkeypatch.setenv("PYBATCH_HOME", str(tmp_path / "home" / "cluster"))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert main(["local", "start", "--citus"]) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("pybatch: error: Citus is not installed")
    assert "scripts/build_citus.sh" in lines[0] and "docs/citus.md" in lines[0]
    assert not (tmp_path / "home" / "citus").exists()
