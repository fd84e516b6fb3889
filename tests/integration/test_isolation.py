"""The flush sets its own isolation: a flusher role (or database) whose default is repeatable
read or serializable loses no beat and quarantines no healthy agent, with two flushers and a
writer at once (issue 19 #4 and #5: before, flush_tidy's snapshot predated another flush's
hand-off and its TRUNCATE destroyed it, and serialization failures went to quarantine)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import sql

from pybatch.grants import Grant, grant
from tests.helpers import make_agents
from tests.integration.roles import as_role, login_role

T0 = datetime(2026, 1, 1, tzinfo=UTC)
AGENTS = 3_000
CHUNK = 100


@pytest.mark.parametrize("level", ["repeatable read", "serializable"])
def test_no_beat_lost_and_no_healthy_agent_quarantined_whatever_the_isolation_default(
    dsn: str, conn: psycopg.Connection, level: str
) -> None:
    agents = make_agents(conn, AGENTS)
    # Each agent beats once, at its own instant: a lost beat leaves its row NULL or wrong.
    beat_of = {agent: T0 + timedelta(milliseconds=i) for i, agent in enumerate(agents)}
    with login_role(conn, "flusher") as role:
        grant(conn, Grant.FLUSHER, role)
        conn.execute(
            sql.SQL("ALTER ROLE {} SET default_transaction_isolation = {}").format(
                sql.Identifier(role), sql.Literal(level)
            )
        )
        writing = threading.Event()
        writing.set()
        errors: list[BaseException] = []

        def write() -> None:
            try:
                with psycopg.connect(dsn, autocommit=True) as w:
                    for start in range(0, AGENTS, CHUNK):
                        chunk = agents[start : start + CHUNK]
                        with (
                            w.cursor() as cur,
                            cur.copy("COPY pybatch.heartbeats (agent_id, beat_at) FROM STDIN") as cp,
                        ):
                            for agent in chunk:
                                cp.write_row((agent, beat_of[agent]))
                        time.sleep(0.03)  # spread the writes over many flushes (pacing, not a wait)
            except BaseException as exc:
                errors.append(exc)
            finally:
                writing.clear()

        def flush_loop() -> None:
            try:
                with as_role(dsn, role) as f:
                    assert f.execute("SHOW transaction_isolation").fetchone() == (level,)
                    while writing.is_set():
                        f.execute("CALL pybatch.flush_in_passes(NULL, interval '50 milliseconds')")
            except BaseException as exc:
                errors.append(exc)

        threads = [
            threading.Thread(target=write),
            threading.Thread(target=flush_loop),
            threading.Thread(target=flush_loop),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        with as_role(dsn, role) as f:  # drain what is left, still as the flusher
            for _ in range(50):
                f.execute("CALL pybatch.flush_in_passes(NULL, interval '5 seconds')")
                left = conn.execute(
                    "SELECT (SELECT count(*) FROM pybatch.heartbeats) + (SELECT count(*) FROM pybatch.pending)"
                ).fetchone()
                if left == (0,):
                    break
    assert conn.execute("SELECT count(*) FROM pybatch.quarantine").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM pybatch.flush_log WHERE error IS NOT NULL").fetchone() == (0,)
    found: dict[object, object] = dict(
        conn.execute(
            "SELECT id, last_connected_at FROM public.workspace_agents WHERE id = ANY (%s)", (agents,)
        ).fetchall()
    )
    lost = [agent for agent in agents if found[agent] != beat_of[agent]]
    assert lost == [], f"{len(lost)} of {AGENTS} beats lost or wrong"
    flushes = conn.execute("SELECT count(*) FROM pybatch.flush_log").fetchone()
    assert flushes is not None and flushes[0] >= 3  # several flushes interleaved with the writes
