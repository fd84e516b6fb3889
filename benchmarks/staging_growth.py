"""How fast staging (pybatch.heartbeats) grows while no flush runs, and what a flush leaves behind.

    .venv/bin/python benchmarks/staging_growth.py [--dsn DSN] [--rows 1000000] [--agents 100000]

Prints pg_total_relation_size after each step, bytes per staged heartbeat and per million, the
growth per minute of a stopped scheduler at the given fleet size (one beat per agent every 15 s),
and the size after a flush (DELETE leaves dead tuples) and after VACUUM.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchdb import database

from pybatch.flush import flush

STEP = 250_000


def size(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT pg_total_relation_size('pybatch.heartbeats')").fetchone()
    assert row is not None
    return int(row[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", help="a migrated database (default: a temporary local cluster)")
    parser.add_argument("--rows", type=int, default=1_000_000, help="heartbeats to stage (default 1,000,000)")
    parser.add_argument("--agents", type=int, default=100_000, help="fleet size for the per-minute figure")
    args = parser.parse_args()
    with database(args.dsn) as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE pybatch.heartbeats")
        # Real agents, so the flush below does the real merge work.
        conn.execute(
            "INSERT INTO public.workspace_agents (id) SELECT gen_random_uuid() "
            "FROM generate_series(1, %s) ON CONFLICT DO NOTHING",
            (args.agents,),
        )
        empty = size(conn)
        print(f"empty staging: {empty:,} bytes")
        staged = 0
        while staged < args.rows:
            n = min(STEP, args.rows - staged)
            # Agents in turn, replica set on half, beats over the last 10 minutes: a real outage's mix.
            conn.execute(
                """
                INSERT INTO pybatch.heartbeats (agent_id, replica_id, beat_at)
                SELECT a.id, CASE WHEN a.n %% 2 = 0 THEN gen_random_uuid() END,
                       now() - make_interval(secs => 600 * random())
                FROM generate_series(1, ceil(%s::numeric / %s)::int) k,
                     (SELECT id, row_number() OVER () AS n FROM public.workspace_agents) a
                LIMIT %s
            """,
                (n, args.agents, n),
            )
            staged += n
            total = size(conn)
            print(f"staged {staged:>10,}: {total:>13,} bytes  ({(total - empty) / staged:.1f} bytes/heartbeat)")
        total = size(conn)
        per_million = (total - empty) / staged * 1_000_000
        beats_per_minute = args.agents * 60 / 15
        print(f"\nper million staged heartbeats: {per_million / 2**20:.1f} MiB")
        print(
            f"at {args.agents:,} agents (one beat per 15 s = {beats_per_minute:,.0f}/min): "
            f"{per_million * beats_per_minute / 1e6 / 2**20:.1f} MiB per minute without a flush, "
            f"{per_million * beats_per_minute * 60 / 1e6 / 2**30:.2f} GiB per hour"
        )
        started = time.monotonic()
        passes = 0
        while flush(conn).rows_staged:
            passes += 1
        print(
            f"\nflushed in {passes} pass(es), {time.monotonic() - started:.1f}s; "
            f"after the flush (dead tuples): {size(conn):,} bytes"
        )
        conn.execute("VACUUM pybatch.heartbeats")
        print(f"after VACUUM: {size(conn):,} bytes")


if __name__ == "__main__":
    main()
