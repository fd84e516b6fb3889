"""Small database helpers shared by the integration tests."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

import psycopg

P = ParamSpec("P")
R = TypeVar("R")


def make_agents(conn: psycopg.Connection, n: int) -> list[uuid.UUID]:
    """Insert n new agents into public.workspace_agents and return their ids."""
    ids = [uuid.uuid4() for _ in range(n)]
    conn.execute("INSERT INTO public.workspace_agents (id) SELECT unnest(%s::uuid[])", (ids,))
    return ids


def stage(conn: psycopg.Connection, agents: list[uuid.UUID], at: datetime) -> None:
    """Stage one heartbeat at `at` for each agent."""
    conn.execute("INSERT INTO pybatch.heartbeats (agent_id, beat_at) SELECT unnest(%s::uuid[]), %s", (agents, at))


def last_connected(conn: psycopg.Connection, agents: list[uuid.UUID]) -> dict[uuid.UUID, datetime | None]:
    """last_connected_at of each agent."""
    rows = conn.execute(
        "SELECT id, last_connected_at FROM public.workspace_agents WHERE id = ANY(%s)", (agents,)
    ).fetchall()
    return dict(rows)


def connected(
    dsn: str, operation: Callable[Concatenate[psycopg.Connection, P], R], /, *args: P.args, **kwargs: P.kwargs
) -> R:
    """Run a library operation that takes a connection on a fresh autocommit one to `dsn`,
    closed afterwards: the caller owns the connection, as the CLI does."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return operation(conn, *args, **kwargs)


def wait_until_blocked_by(conn: psycopg.Connection, holder_pid: int, timeout: float = 30.0) -> None:
    """Wait until some backend waits on a lock that backend `holder_pid` holds: a statement
    started in another thread has reached the lock, which a fixed sleep can only hope for."""
    deadline = time.monotonic() + timeout
    query = "SELECT EXISTS (SELECT FROM pg_catalog.pg_stat_activity WHERE %s = ANY(pg_catalog.pg_blocking_pids(pid)))"
    while True:
        row = conn.execute(query, (holder_pid,)).fetchone()
        if row is not None and row[0]:
            return
        assert time.monotonic() < deadline, f"nothing waited on backend {holder_pid} within {timeout:.0f}s"
        time.sleep(0.02)


def run_benchmark(script: str, *args: str) -> str:
    """Run benchmarks/`script` with `args` from the repository's root; its stdout. Fails on a non-zero exit."""
    done = subprocess.run(
        [sys.executable, f"benchmarks/{script}", *args],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout
