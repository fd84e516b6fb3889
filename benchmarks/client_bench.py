"""Measure HeartbeatClient: beat() overhead per call in both modes, and heartbeats per
second into pybatch.heartbeats from one process (buffered COPY vs immediate INSERT).

    .venv/bin/python benchmarks/client_bench.py --dsn postgresql://...   # a migrated database
    .venv/bin/python benchmarks/client_bench.py                          # a temporary local cluster

It writes only to pybatch.heartbeats and empties it before and after each measurement
(never run it against a database whose staging holds heartbeats you still need)."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import uuid

import psycopg
from benchdb import database

from pybatch import HeartbeatClient


def empty_staging(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("WITH d AS (DELETE FROM pybatch.heartbeats RETURNING 1) SELECT count(*) FROM d").fetchone()
    return int(row[0]) if row else 0


def buffered_beat_overhead(dsn: str, agents: list[uuid.UUID], calls: int) -> float:
    """µs per beat() with the writer idle (the cost the app's hot loop pays)."""
    with HeartbeatClient(dsn, mode="buffered", write_interval="1h", max_batch=len(agents) + 1) as hb:
        start = time.perf_counter()
        for i in range(calls):
            hb.beat(agents[i % len(agents)])
        elapsed = time.perf_counter() - start
    empty_staging(dsn)
    return elapsed / calls * 1e6


def buffered_copy_rate(dsn: str, agents: list[uuid.UUID], rounds: int) -> float:
    """Heartbeats/s one COPY of every agent's buffered beat puts into staging (median of rounds)."""
    rates = []
    with HeartbeatClient(dsn, mode="buffered", write_interval="1h", max_batch=len(agents) + 1) as hb:
        for _ in range(rounds):
            for agent in agents:
                hb.beat(agent)
            start = time.perf_counter()
            written = hb.flush_buffer()
            rates.append(written / (time.perf_counter() - start))
    assert empty_staging(dsn) == len(agents) * rounds
    return statistics.median(rates)


def buffered_steady_state(dsn: str, agents: list[uuid.UUID], seconds: float) -> tuple[float, float]:
    """beat() calls/s and rows/s into staging with the writer thread running (1 s interval)."""
    with HeartbeatClient(dsn, mode="buffered", write_interval="1s", max_batch=5000) as hb:
        start = time.perf_counter()
        calls = 0
        while time.perf_counter() - start < seconds:
            for agent in agents:
                hb.beat(agent)
            calls += len(agents)
        elapsed = time.perf_counter() - start
        written = hb.stats.rows_written
    assert hb.stats.write_failures == 0
    empty_staging(dsn)
    return calls / elapsed, written / elapsed


def immediate_beat(dsn: str, agents: list[uuid.UUID], calls: int) -> float:
    """µs per beat() in immediate mode (one INSERT, committed, per call)."""
    with HeartbeatClient(dsn) as hb:
        hb.beat(agents[0])  # connect outside the timing
        start = time.perf_counter()
        for i in range(calls):
            hb.beat(agents[i % len(agents)])
        elapsed = time.perf_counter() - start
    assert empty_staging(dsn) == calls + 1
    return elapsed / calls * 1e6


def run(dsn: str, args: argparse.Namespace) -> None:
    agents = [uuid.uuid4() for _ in range(args.agents)]
    empty_staging(dsn)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"{args.agents} agents")
    with psycopg.connect(dsn) as conn:
        print(f"server: {conn.execute('SHOW server_version').fetchone()[0]}")  # type: ignore[index]
    buffered_us = buffered_beat_overhead(dsn, agents, args.calls)
    copy_rate = buffered_copy_rate(dsn, agents, args.rounds)
    calls_rate, rows_rate = buffered_steady_state(dsn, agents, args.seconds)
    immediate_us = immediate_beat(dsn, agents, args.immediate_calls)
    print()
    print(f"{'measure':<58} {'value':>12}")
    print(f"{'buffered beat() overhead, writer idle (µs/call)':<58} {buffered_us:>12.2f}")
    print(f"{'buffered COPY into staging (heartbeats/s, median)':<58} {copy_rate:>12,.0f}")
    print(f"{'buffered steady state: beat() calls/s accepted':<58} {calls_rate:>12,.0f}")
    print(f"{'buffered steady state: rows/s written (1 s interval)':<58} {rows_rate:>12,.0f}")
    print(f"{'immediate beat() (µs/call, one committed INSERT)':<58} {immediate_us:>12.1f}")
    print(f"{'immediate INSERT into staging (heartbeats/s)':<58} {1e6 / immediate_us:>12,.0f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dsn", help="a migrated database (default: start a temporary local cluster)")
    parser.add_argument("--agents", type=int, default=10_000, help="distinct agents (default 10000)")
    parser.add_argument("--calls", type=int, default=500_000, help="buffered beat() calls timed (default 500000)")
    parser.add_argument("--rounds", type=int, default=5, help="COPY rounds, median reported (default 5)")
    parser.add_argument("--seconds", type=float, default=5.0, help="steady-state run length (default 5)")
    parser.add_argument("--immediate-calls", type=int, default=5_000,
                        help="immediate beat() calls timed (default 5000)")
    args = parser.parse_args(argv)
    with database(args.dsn) as dsn:
        run(dsn, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
