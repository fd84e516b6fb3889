"""How long the inspection views take with a deep staging table, and how close the estimates are.

    .venv/bin/python benchmarks/inspect_views.py [--dsn DSN] [--rows 1000000] [--agents 10000] [--runs 20]

Stages --rows heartbeats over --agents agents (all known to workspace_agents), then times
each view (--runs times; min, median, max) next to the exact queries it avoids, and prints
staging_summary's estimates beside the true figures. Budget (issue 5): staging_summary
within 100 ms at 1,000,000 staged rows.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchdb import database

QUERIES = {
    "staging_summary": "SELECT * FROM pybatch.staging_summary",
    "health": "SELECT * FROM pybatch.health",
    "flush_history LIMIT 10": "SELECT * FROM pybatch.flush_history LIMIT 10",
    "agent_status by status": "SELECT status, count(*), count(*) FILTER (WHERE newer_heartbeat_staged) "
    "FROM pybatch.agent_status GROUP BY status",
    "exact count/min/max (avoided)": "SELECT count(*), min(beat_at), max(beat_at) FROM pybatch.heartbeats",
    "exact distinct agents (avoided)": "SELECT count(DISTINCT agent_id) FROM pybatch.heartbeats",
}


def timed(conn: psycopg.Connection, query: str, runs: int) -> list[float]:
    conn.execute(query).fetchall()  # warm the cache and the plan
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        conn.execute(query).fetchall()
        times.append((time.perf_counter() - start) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", help="a migrated database (default: a temporary local cluster)")
    parser.add_argument("--rows", type=int, default=1_000_000, help="heartbeats to stage (default 1,000,000)")
    parser.add_argument("--agents", type=int, default=10_000, help="agents they belong to (default 10,000)")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per query (default 20)")
    args = parser.parse_args()
    with database(args.dsn) as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE pybatch.heartbeats")
        conn.execute(
            "INSERT INTO public.workspace_agents (id) SELECT gen_random_uuid() FROM generate_series(1, %s)",
            (args.agents,),
        )
        conn.execute(
            """
            INSERT INTO pybatch.heartbeats (agent_id, replica_id, beat_at)
            SELECT a.id, gen_random_uuid(), now() - make_interval(secs => 600 * random())
            FROM generate_series(1, ceil(%s::numeric / %s)::int) k, public.workspace_agents a
            LIMIT %s
        """,
            (args.rows, args.agents, args.rows),
        )
        conn.execute("VACUUM (ANALYZE) pybatch.heartbeats")
        time.sleep(1.5)  # let the statistics counters reach shared memory
        true = conn.execute(
            "SELECT count(*), count(DISTINCT agent_id), min(beat_at), max(beat_at) FROM pybatch.heartbeats"
        ).fetchone()
        assert true is not None
        version = conn.execute("SHOW server_version").fetchone()
        assert version is not None
        print(f"staged {true[0]:,} heartbeats of {true[1]:,} agents; server {version[0]}")
        print(f"{'query':<34} {'min ms':>8} {'median':>8} {'max ms':>8}")
        for name, query in QUERIES.items():
            times = timed(conn, query, args.runs if "avoided" not in name else max(3, args.runs // 4))
            print(f"{name:<34} {min(times):>8.1f} {statistics.median(times):>8.1f} {max(times):>8.1f}")
        print("\nstaging_summary estimates vs truth (5 reads):")
        for _ in range(5):
            row = conn.execute(
                "SELECT rows_staged, distinct_agents, oldest_beat_at, newest_beat_at, method "
                "FROM pybatch.staging_summary"
            ).fetchone()
            assert row is not None
            print(
                f"  rows {row[0]:>9,} ({(row[0] / true[0] - 1):+.1%})  agents {row[1]:>7,} "
                f"({(row[1] / true[1] - 1):+.1%})  oldest off by {(row[2] - true[2]).total_seconds():.1f}s  "
                f"newest off by {(true[3] - row[3]).total_seconds():.1f}s  [{row[4]}]"
            )


if __name__ == "__main__":
    main()
