"""Every script in examples/ runs as a subprocess against a fresh migrated database, the way
a user runs it (DSN in PYBATCH_DSN), and leaves the rows it promises in workspace_agents."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
NODE_DIR = EXAMPLES / "node"


def _env(dsn: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYBATCH_", "PG"))}
    env["PYBATCH_DSN"] = dsn
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _run(argv: list[str], dsn: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, cwd=cwd, env=_env(dsn), capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"{argv} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return result


def _agents(dsn: str, ids: list[str]) -> dict[str, tuple[Any, ...]]:
    """status, first_connected_at, last_connected_at, disconnected_at, replica per agent, after a flush."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CALL pybatch.flush_in_passes()")
        rows = conn.execute(
            "SELECT a.id::text, s.status, a.first_connected_at, a.last_connected_at, a.disconnected_at, "
            "a.last_connected_replica_id::text FROM public.workspace_agents a "
            "JOIN pybatch.agent_status s ON s.agent_id = a.id WHERE a.id = ANY(%s::uuid[])",
            (ids,),
        ).fetchall()
        staged = conn.execute("SELECT count(*) FROM pybatch.heartbeats").fetchone()
    assert staged == (0,)  # everything the example staged was merged
    return {row[0]: row[1:] for row in rows}


def _ids(prefix: str, numbers: range) -> list[str]:
    return [str(uuid.UUID(f"e0000000-0000-4000-8000-{prefix}{n:02d}")) for n in numbers]


def test_every_example_is_covered() -> None:
    shipped = {p.name for p in EXAMPLES.iterdir() if p.suffix in (".py", ".sql")}
    shipped |= {f"node/{p.name}" for p in NODE_DIR.glob("*.js")}
    assert shipped == {"quickstart.py", "buffered_app.py", "async_client.py", "plain_sql.sql", "node/copy_writer.js"}


def test_quickstart(dsn: str) -> None:
    out = _run([sys.executable, "examples/quickstart.py"], dsn).stdout
    assert "agents_updated=1" in out and ": connected," in out
    (agent,) = _ids("0000000000", range(1, 2))
    rows = _agents(dsn, [agent])
    status, first, last, disconnected, replica = rows[agent]
    assert status == "connected" and first is not None and last is not None and disconnected is None
    assert replica == "e0000000-0000-4000-8000-0000000000ff"
    _run([sys.executable, "examples/quickstart.py"], dsn)  # a rerun updates the same row
    assert _agents(dsn, [agent])[agent][0] == "connected"


def test_buffered_app(dsn: str) -> None:
    out = _run([sys.executable, "examples/buffered_app.py"], dsn).stdout
    assert "beats accepted 200" in out and "write failures 0" in out
    agents = _ids("0000000001", range(20))
    rows = _agents(dsn, agents)
    assert len(rows) == 20
    assert [rows[a][0] for a in agents] == ["connected"] * 19 + ["disconnected"]
    assert all(rows[a][4] == "e0000000-0000-4000-8000-0000000001ff" for a in agents)
    assert rows[agents[-1]][3] is not None and rows[agents[-1]][3] >= rows[agents[-1]][2]


def test_async_client(dsn: str) -> None:
    out = _run([sys.executable, "examples/async_client.py"], dsn).stdout
    assert "agents_updated=5" in out
    agents = _ids("0000000002", range(5))
    rows = _agents(dsn, agents)
    assert [rows[a][0] for a in agents] == ["disconnected"] + ["connected"] * 4
    assert all(rows[a][1] is not None for a in agents)


def test_plain_sql_through_psql(dsn: str) -> None:
    psql = shutil.which("psql")
    assert psql is not None, "psql is part of the documented set-up (postgresql-client)"
    out = _run([psql, dsn, "-v", "ON_ERROR_STOP=1", "-X", "-f", "examples/plain_sql.sql"], dsn).stdout
    assert "disconnected" in out
    agents = _ids("0000000003", range(1, 3))
    rows = _agents(dsn, agents)
    assert rows[agents[0]][0] == "connected" and rows[agents[1]][0] == "disconnected"
    assert rows[agents[0]][4] == "e0000000-0000-4000-8000-0000000003ff"


def test_node_copy_writer(dsn: str) -> None:
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node is not None and npm is not None, "node and npm are part of the set-up for the Node example"
    if not (NODE_DIR / "node_modules" / "pg-copy-streams").is_dir():
        _run([npm, "ci", "--no-audit", "--no-fund"], dsn, cwd=NODE_DIR)  # what scripts/setup.sh does
    out = _run([node, "copy_writer.js"], dsn, cwd=NODE_DIR).stdout
    assert "copied 9 heartbeats" in out and "agents_updated=3" in out
    agents = [f"e0000000-0000-4000-8000-00000000a00{n}" for n in (1, 2, 3)]
    rows = _agents(dsn, agents)
    assert [rows[a][0] for a in agents] == ["connected"] * 3
    assert all(rows[a][4] == "e0000000-0000-4000-8000-0000000000fe" for a in agents)
    # the newest of each agent's three beats won: first_connected_at is 2 s before it
    assert all((rows[a][2] - rows[a][1]).total_seconds() == pytest.approx(2, abs=0.01) for a in agents)
