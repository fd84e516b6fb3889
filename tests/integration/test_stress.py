"""Stress: 8 writer threads COPY 1,000,000 heartbeats (random times, ties, replicas), with random
disconnects, while a flush runs every 100 ms. Every agent must end exactly as the reference model
(tests/model.py: every event applied one at a time in timestamp order) says: 0 lost, 0 wrong."""

from __future__ import annotations

import random
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from pybatch.flush import flush
from tests.model import AgentState, Beat, Disconnect, actual_states, expected_states

WRITERS = 8
BEATS_PER_WRITER = 125_000  # 8 x 125,000 = 1,000,000
BATCH = 2_500
AGENTS = 5_000
DISCONNECTS_PER_BATCH = 5
FLUSH_EVERY = 0.1
FLUSH_CAP = 25_000  # keeps each flush short, so flushes interleave with the writers many times
T0 = datetime(2026, 1, 1, tzinfo=UTC)
# Whole seconds over 20 minutes: many ties between beats, and between beats and disconnects.
TIMES = [T0 + timedelta(seconds=s) for s in range(1200)]
TIME_TEXT = [t.isoformat() for t in TIMES]
REPLICAS: list[uuid.UUID | None] = [None, uuid.UUID(int=1), uuid.UUID(int=2), uuid.UUID(int=2**127)]


@pytest.mark.slow
def test_stress_one_million_heartbeats(dsn: str, conn: psycopg.Connection) -> None:
    agents = [uuid.uuid4() for _ in range(AGENTS)]
    agent_text = [str(a) for a in agents]
    replica_text = ["\\N" if r is None else str(r) for r in REPLICAS]
    conn.execute(
        "INSERT INTO public.workspace_agents (id, created_at) SELECT unnest(%s::uuid[]), %s",
        (agents, T0 - timedelta(days=1)),
    )
    events: list[list[Beat | Disconnect]] = [[] for _ in range(WRITERS)]
    errors: list[BaseException] = []
    stop = threading.Event()
    flushes = {"ok": 0, "skipped": 0, "failed": 0, "rows": 0}

    def writer(index: int) -> None:
        rng = random.Random(index)
        mine = events[index]
        try:
            with psycopg.connect(dsn, autocommit=True) as c:
                for _ in range(BEATS_PER_WRITER // BATCH):
                    picks = [
                        (rng.randrange(AGENTS), rng.randrange(len(TIMES)), rng.randrange(len(REPLICAS)))
                        for _ in range(BATCH)
                    ]
                    text = "".join(f"{agent_text[a]}\t{replica_text[r]}\t{TIME_TEXT[t]}\n" for a, t, r in picks)
                    with (
                        c.cursor() as cur,
                        cur.copy("COPY pybatch.heartbeats (agent_id, replica_id, beat_at) FROM STDIN") as cp,
                    ):
                        cp.write(text)
                    mine.extend(Beat(agents[a], TIMES[t], REPLICAS[r]) for a, t, r in picks)
                    for _ in range(DISCONNECTS_PER_BATCH):
                        d = Disconnect(agents[rng.randrange(AGENTS)], TIMES[rng.randrange(len(TIMES))])
                        c.execute("SELECT pybatch.disconnect(%s, %s)", (d.agent_id, d.at))
                        mine.append(d)
        except BaseException as exc:
            errors.append(exc)

    def flusher() -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as c:
                due = time.monotonic()
                while not stop.wait(max(0.0, due - time.monotonic())):
                    due = time.monotonic() + FLUSH_EVERY  # every 100 ms, back to back when one runs longer
                    result = flush(c, max_rows=FLUSH_CAP)
                    key = "skipped" if result.skipped else "failed" if result.error else "ok"
                    flushes[key] += 1
                    flushes["rows"] += result.rows_staged or 0
        except BaseException as exc:
            errors.append(exc)

    started = time.monotonic()
    threads = [threading.Thread(target=writer, args=(i,)) for i in range(WRITERS)]
    flush_thread = threading.Thread(target=flusher)
    flush_thread.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writing = time.monotonic() - started
    stop.set()
    flush_thread.join()
    while (final := flush(conn)).rows_staged:
        flushes["rows"] += final.rows_staged or 0
    duration = time.monotonic() - started
    assert errors == []

    all_events = [event for mine in events for event in mine]
    beats = sum(isinstance(e, Beat) for e in all_events)
    assert beats == WRITERS * BEATS_PER_WRITER
    assert flushes["rows"] == beats and flushes["failed"] == 0
    expected = expected_states(all_events)
    actual = actual_states(conn, agents)
    lost = [
        a
        for a in agents
        if expected.get(a, AgentState()).last_connected_at is not None
        and actual[a].last_connected_at != expected[a].last_connected_at
    ]
    wrong = [a for a in agents if actual[a] != expected.get(a, AgentState())]
    print(
        f"\nstress: {beats:,} heartbeats + {len(all_events) - beats:,} disconnects from {WRITERS} writers "
        f"to {AGENTS:,} agents in {writing:.1f}s ({beats / writing:,.0f} beats/s); {flushes['ok']} flushes "
        f"({flushes['skipped']} skipped) every {FLUSH_EVERY * 1000:.0f} ms; total {duration:.1f}s; "
        f"lost {len(lost)}, wrong {len(wrong)}"
    )
    assert lost == [] and wrong == []
