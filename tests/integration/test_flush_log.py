"""flush_log accounts for every flush (issue 19 #8, #9): the hand-off writes the row, each pass
adds its own figures, the end completes it. A flush killed half-way keeps a row with what it
drained and dropped; a flusher cannot log figures that no flush produced."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from pybatch import status
from pybatch.grants import Grant, grant
from tests.helpers import make_agents
from tests.integration.roles import as_role, login_role


def _stage(conn: psycopg.Connection, rows: list[tuple[object, datetime]]) -> None:
    with conn.cursor() as cur, cur.copy("COPY pybatch.heartbeats (agent_id, beat_at) FROM STDIN") as cp:
        for row in rows:
            cp.write_row(row)


def _wait_for(conn: psycopg.Connection, query: str, deadline_s: float = 30.0) -> tuple[object, ...]:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        row = conn.execute(query).fetchone()
        if row is not None:
            return tuple(row)
        time.sleep(0.05)
    raise AssertionError(f"never true: {query}")


def test_a_flush_killed_after_its_hand_off_keeps_a_row_with_what_it_drained_and_dropped(
    dsn: str, conn: psycopg.Connection
) -> None:
    agents = make_agents(conn, 5)
    now = datetime.now(UTC)
    _stage(conn, [(a, now - timedelta(seconds=1)) for a in agents])
    _stage(conn, [(agents[0], now + timedelta(days=1))] * 7)  # future: dropped at the hand-off
    # The merge of agent 4 blocks on a row lock this session holds, so the flush stays in a pass.
    conn.execute("BEGIN")
    conn.execute("SELECT FROM public.workspace_agents WHERE id = %s FOR UPDATE", (agents[4],))
    conn.execute("""
        CREATE OR REPLACE FUNCTION public.slow_merge() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_sleep(600); RETURN NEW; END $$;
        CREATE TRIGGER slow_merge BEFORE UPDATE ON public.workspace_agents
            FOR EACH ROW EXECUTE FUNCTION public.slow_merge();
    """)
    conn.execute("COMMIT")
    errors: list[BaseException] = []

    def run() -> None:
        with psycopg.connect(dsn, autocommit=True, application_name="doomed-flush") as f:
            try:
                f.execute("CALL pybatch.flush_in_passes()")
            except psycopg.Error as exc:
                errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    row = _wait_for(
        conn,
        "SELECT id, rows_staged, future_heartbeats, completed_at FROM pybatch.flush_log WHERE completed_at IS NULL",
    )
    _wait_for(conn, "SELECT 1 FROM pg_stat_activity WHERE application_name = 'doomed-flush' AND query LIKE '%flush%'")
    conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'doomed-flush'")
    thread.join(timeout=60)
    assert errors, "the flush was not terminated"
    conn.execute("DROP TRIGGER slow_merge ON public.workspace_agents")
    logged = conn.execute(
        "SELECT rows_staged, future_heartbeats, completed_at FROM pybatch.flush_log WHERE id = %s", (row[0],)
    ).fetchone()
    assert logged == (12, 7, None)  # drained and dropped, and not completed
    history = conn.execute("SELECT succeeded FROM pybatch.flush_history WHERE flush_id = %s", (row[0],)).fetchone()
    assert history == (False,)
    # Nothing lost: the next flush merges what the killed one handed off.
    conn.execute("CALL pybatch.flush_in_passes()")
    merged = conn.execute(
        "SELECT count(*) FROM public.workspace_agents WHERE id = ANY (%s) AND last_connected_at IS NOT NULL", (agents,)
    ).fetchone()
    assert merged == (5,)


def test_a_flusher_cannot_log_figures_no_flush_produced(dsn: str, conn: psycopg.Connection) -> None:
    with login_role(conn, "flusher") as role:
        grant(conn, Grant.FLUSHER, role)
        assert status.health(conn).status == "stalled"
        with as_role(dsn, role) as f:
            forged = (
                "SELECT * FROM pybatch.flush_finish(ROW(NULL, now(), false, 999999, 999999, 0, 0, 0, interval '1 s',"
                " NULL, 1, 999999, 0, 0, now())::pybatch.flush_result)"
            )
            f.execute(forged)
            f.execute(forged.replace("ROW(NULL,", "ROW(1,"))  # an id it guessed
        assert conn.execute("SELECT count(*) FROM pybatch.flush_log").fetchone() == (0,)
        assert status.health(conn).status == "stalled"
        # A real flush started by the flusher, with inflated figures passed to its pass and its end:
        agents = make_agents(conn, 3)
        _stage(conn, [(a, datetime.now(UTC) - timedelta(seconds=1)) for a in agents])
        with as_role(dsn, role) as f:
            begun = f.execute("SELECT * FROM pybatch.flush_begin()").fetchone()
            assert begun is not None
            flush_id = begun[0]
            result = list(begun)
            result[4] = 999_999  # agents_updated, inflated before the first pass
            fields = ", ".join(["%s"] * len(result))
            for _ in range(10):  # the passes, as flush_in_passes() runs them
                passed = f.execute(f"SELECT * FROM pybatch.flush_pass(ROW({fields})::pybatch.flush_result)", result)
                row = passed.fetchone()
                assert row is not None
                if row[10] == result[10]:  # passes did not grow: nothing left
                    break
                result = list(row)
            assert result[4] == 999_999 + 3  # the caller's arithmetic carries the inflation...
            f.execute(f"SELECT * FROM pybatch.flush_finish(ROW({fields})::pybatch.flush_result)", result)
        logged = conn.execute(
            "SELECT agents_updated, passes, completed_at IS NOT NULL FROM pybatch.flush_log WHERE id = %s",
            (flush_id,),
        ).fetchone()
        assert logged is not None and logged[0] == 3 and logged[2]  # ... the log holds what the passes did


@pytest.mark.parametrize("path", ["CALL pybatch.flush_in_passes()", "SELECT pybatch.flush()"])
def test_a_finished_flush_row_is_complete(conn: psycopg.Connection, path: str) -> None:
    agents = make_agents(conn, 4)
    _stage(conn, [(a, datetime.now(UTC) - timedelta(seconds=1)) for a in agents])
    conn.execute(path)
    row = conn.execute(
        "SELECT rows_staged, agents_updated, passes >= 1, completed_at IS NOT NULL, heap_bytes > 0, error"
        " FROM pybatch.flush_log"
    ).fetchone()
    assert row == (4, 4, True, True, True, None)
    assert status.health(conn).status == "ok"
