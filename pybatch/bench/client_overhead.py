"""`pybatch bench --client`: what HeartbeatClient costs the app, from one process.

beat() overhead per call in both modes, and heartbeats per second into pybatch.heartbeats
(buffered COPY against immediate INSERT). It writes only to staging and empties it after
each measurement, so never point it at a database whose staging holds heartbeats you need.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import psycopg

from pybatch.client import HeartbeatClient


@dataclass(frozen=True)
class ClientFigures:
    buffered_beat_us: float  # beat() with the writer idle: what the app's hot loop pays
    buffered_copy_per_s: float  # one COPY of every agent's beat, median of the rounds
    buffered_calls_per_s: float  # beat() calls accepted with the writer running
    buffered_rows_per_s: float  # rows written meanwhile (1 s write interval)
    immediate_beat_us: float  # one committed INSERT per call

    def rows(self) -> list[dict[str, str]]:
        return [
            {"measure": "buffered beat(), writer idle", "value": f"{self.buffered_beat_us:.2f} µs/call"},
            {"measure": "buffered COPY into staging", "value": f"{self.buffered_copy_per_s:,.0f} heartbeats/s"},
            {"measure": "buffered, writer running: beat() calls", "value": f"{self.buffered_calls_per_s:,.0f}/s"},
            {"measure": "buffered, writer running: rows written", "value": f"{self.buffered_rows_per_s:,.0f}/s"},
            {"measure": "immediate beat() (one committed INSERT)", "value": f"{self.immediate_beat_us:.1f} µs/call"},
            {"measure": "immediate INSERT into staging", "value": f"{1e6 / self.immediate_beat_us:,.0f} heartbeats/s"},
        ]


def _empty_staging(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("WITH d AS (DELETE FROM pybatch.heartbeats RETURNING 1) SELECT count(*) FROM d").fetchone()
    return int(row[0]) if row else 0


def measure(
    dsn: str,
    *,
    agents: int = 10_000,
    calls: int = 500_000,
    rounds: int = 5,
    seconds: float = 5.0,
    immediate_calls: int = 5_000,
    progress: Callable[[str], None] | None = None,
) -> ClientFigures:
    say = progress or (lambda message: None)
    ids = [uuid.uuid4() for _ in range(agents)]
    _empty_staging(dsn)

    say(f"[client] buffered beat() overhead, {calls} calls")
    with HeartbeatClient(dsn, mode="buffered", write_interval="1h", max_batch=agents + 1) as hb:
        start = time.perf_counter()
        for i in range(calls):
            hb.beat(ids[i % agents])
        buffered_us = (time.perf_counter() - start) / calls * 1e6
    _empty_staging(dsn)

    say(f"[client] buffered COPY, {rounds} rounds of {agents}")
    rates = []
    with HeartbeatClient(dsn, mode="buffered", write_interval="1h", max_batch=agents + 1) as hb:
        for _ in range(rounds):
            for agent in ids:
                hb.beat(agent)
            start = time.perf_counter()
            written = hb.flush_buffer()
            rates.append(written / (time.perf_counter() - start))
    if _empty_staging(dsn) != agents * rounds:
        raise AssertionError("buffered COPY lost rows")  # would make every figure meaningless

    say(f"[client] buffered with the writer running, {seconds:g}s")
    with HeartbeatClient(dsn, mode="buffered", write_interval="1s", max_batch=5000) as hb:
        start = time.perf_counter()
        accepted = 0
        while time.perf_counter() - start < seconds:
            for agent in ids:
                hb.beat(agent)
            accepted += agents
        elapsed = time.perf_counter() - start
        written_rows = hb.stats.rows_written
    _empty_staging(dsn)

    say(f"[client] immediate beat(), {immediate_calls} calls")
    with HeartbeatClient(dsn) as hb:
        hb.beat(ids[0])  # connect outside the timing
        start = time.perf_counter()
        for i in range(immediate_calls):
            hb.beat(ids[i % agents])
        immediate_us = (time.perf_counter() - start) / immediate_calls * 1e6
    _empty_staging(dsn)

    return ClientFigures(
        buffered_us, statistics.median(rates), accepted / elapsed, written_rows / elapsed, immediate_us
    )
