"""Catch-up after a scheduler outage: how long the first flushes take, and how long writers wait meanwhile.

    .venv/bin/python benchmarks/catchup.py [--dsn DSN] [--agents 100000] [--outage 600] [--caps 1000000,none]

The outage leaves agents x outage/15 heartbeats staged (100,000 agents x 40 = 4,000,000 rows for
10 minutes). For each row cap (pybatch.flush(max_rows)), the backlog is staged afresh and flushed
pass after pass, back to back (as `pybatch scheduler` does when a flush hits the cap), while
writers keep going at the fleet's rate (agents/15 beats/s, COPY of 500) and one more writer
INSERTs single rows every 10 ms. Prints each pass's duration and the writers' latencies.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchdb import database

from pybatch.flush import flush

HEARTBEAT_PERIOD = 15.0  # seconds between two beats of one agent (Coder)
COPY_BATCH = 500


class Writers:
    """The fleet keeps writing during catch-up: COPY batches at the fleet rate, plus single INSERTs."""

    def __init__(self, dsn: str, agents: int) -> None:
        self.dsn = dsn
        self.rate = agents / HEARTBEAT_PERIOD
        self.copy_latency: list[float] = []
        self.insert_latency: list[float] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.copies), threading.Thread(target=self.inserts)]

    def __enter__(self) -> Writers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()

    def copies(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            ids = [r[0] for r in conn.execute("SELECT id FROM public.workspace_agents LIMIT 20000").fetchall()]
            period = COPY_BATCH / self.rate
            due = time.monotonic()
            position = 0
            while not self.stop.is_set():
                started = time.monotonic()
                with conn.cursor() as cur, cur.copy("COPY pybatch.heartbeats (agent_id) FROM STDIN") as cp:
                    for i in range(COPY_BATCH):
                        cp.write_row((ids[(position + i) % len(ids)],))
                self.copy_latency.append(time.monotonic() - started)
                position += COPY_BATCH
                due += period
                self.stop.wait(max(0.0, due - time.monotonic()))

    def inserts(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            row = conn.execute("SELECT id FROM public.workspace_agents LIMIT 1").fetchone()
            assert row is not None
            while not self.stop.wait(0.01):
                started = time.monotonic()
                conn.execute("INSERT INTO pybatch.heartbeats (agent_id) VALUES (%s)", (row[0],))
                self.insert_latency.append(time.monotonic() - started)


def percentiles(values: list[float]) -> str:
    if not values:
        return "none"
    ordered = sorted(values)

    def p(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return (
        f"n={len(values)} p50 {statistics.median(values) * 1000:.1f} ms, p99 {p(0.99):.1f} ms, "
        f"max {ordered[-1] * 1000:.1f} ms"
    )


def stage_backlog(conn: psycopg.Connection, agents: int, outage: float) -> int:
    """The outage's heartbeats, oldest first: every agent once per period, over `outage` seconds."""
    conn.execute("TRUNCATE pybatch.heartbeats")
    beats = int(outage // HEARTBEAT_PERIOD)
    conn.execute(
        """
        INSERT INTO pybatch.heartbeats (agent_id, beat_at)
        SELECT a.id, now() - make_interval(secs => %s - k * %s)
        FROM generate_series(0, %s - 1) k, public.workspace_agents a
        ORDER BY k
    """,
        (outage, HEARTBEAT_PERIOD, beats),
    )
    conn.execute("VACUUM ANALYZE public.workspace_agents")
    row = conn.execute("SELECT count(*) FROM pybatch.heartbeats").fetchone()
    return int(row[0]) if row else 0


def run(dsn: str, agents: int, outage: float, cap: int | None) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        backlog = stage_backlog(conn, agents, outage)
        label = f"{cap:,}" if cap else "none"
        print(f"\ncap {label}: {backlog:,} rows staged by a {outage:.0f}s outage at {agents:,} agents")
        # max_rows NULL falls back to settings.max_rows_per_flush; "none" means no cap at all.
        saved = conn.execute("SELECT max_rows_per_flush FROM pybatch.settings").fetchone()
        if cap is None:
            conn.execute("UPDATE pybatch.settings SET max_rows_per_flush = NULL")
        passes: list[tuple[float, int]] = []
        started = time.monotonic()
        with Writers(dsn, agents) as writers:
            while True:
                result = flush(conn, max_rows=cap, raise_on_error=True)
                passes.append((result.duration.total_seconds(), result.rows_staged or 0))
                if cap is None or (result.rows_staged or 0) < cap:
                    break
        total = time.monotonic() - started
        conn.execute("UPDATE pybatch.settings SET max_rows_per_flush = %s", (saved[0] if saved else None,))
        for i, (seconds, rows) in enumerate(passes, 1):
            print(f"  pass {i}: {rows:>9,} rows in {seconds:6.2f}s ({rows / max(seconds, 1e-9):,.0f} rows/s)")
        print(f"  caught up in {total:.1f}s over {len(passes)} pass(es); longest pass {max(p[0] for p in passes):.2f}s")
        print(f"  writers meanwhile: COPY of {COPY_BATCH}: {percentiles(writers.copy_latency)}")
        print(f"                     single INSERT: {percentiles(writers.insert_latency)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", help="a migrated database (default: a temporary local cluster)")
    parser.add_argument("--agents", type=int, default=100_000)
    parser.add_argument("--outage", type=float, default=600.0, help="scheduler outage in seconds (default 600)")
    parser.add_argument(
        "--caps",
        default="1000000,none",
        help="comma-separated row caps per flush pass; 'none' = uncapped (default 1000000,none)",
    )
    args = parser.parse_args()
    caps = [None if c.strip().lower() == "none" else int(c) for c in args.caps.split(",")]
    with database(args.dsn) as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("TRUNCATE public.workspace_agents")
            conn.execute(
                "INSERT INTO public.workspace_agents (id) SELECT gen_random_uuid() FROM generate_series(1, %s)",
                (args.agents,),
            )
        for cap in caps:
            run(dsn, args.agents, args.outage, cap)


if __name__ == "__main__":
    main()
