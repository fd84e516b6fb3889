"""Two or more versions of the flush routines, round by round on one server: which is cheaper.

    git show ac5b0bd:sql/routines/flush/merge_pass_in.sql > /tmp/old_merge.sql
    .venv/bin/python benchmarks/flush_variants.py --agents 100000 --table coder \\
        /tmp/old_merge.sql sql/routines/flush/merge_pass_in.sql

Each VARIANT is a comma-separated list of routine source files (sql/routines/...), applied with
CREATE OR REPLACE before each of its rounds. Round after round, every variant in turn stages one
heartbeat for every agent and runs one flush (CALL pybatch.flush_in_passes()), so the variants
share the machine's noise (with --beats N, N heartbeats per agent, a millisecond apart, as after
a flush that fell behind); the first two rounds of each are left out (the table settles). Prints
each flush and then, per variant, the median server-side duration and the median CPU of the
flushing backend (/proc, 10 ms ticks). A temporary cluster with fsync on and shared_buffers 2GB;
the table as `pybatch bench --flush-rounds` loads it (pybatch.bench.fleet_run.reset_agents:
random-looking ids in creation order).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import psycopg

from pybatch import db, migrate
from pybatch.bench.fleet import agent_ids
from pybatch.bench.fleet_run import reset_agents
from pybatch.bench.flush_rounds import RoundLog, stage_every_agent
from pybatch.bench.measure import backend_cpu_ms
from pybatch.bench.target import bench_target
from pybatch.flush import flush
from pybatch.local import temporary_cluster

SETTLE_ROUNDS = 2


def apply(conn: psycopg.Connection, variant: str) -> None:
    for path in variant.split(","):
        conn.execute(Path(path).read_text())


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("variants", nargs="+", help="comma-separated routine source files, one list per variant")
    parser.add_argument("--agents", type=int, default=100_000)
    parser.add_argument("--table", choices=("coder", "minimal"), default="coder")
    parser.add_argument("--rounds", type=int, default=7, help="rounds per variant (the first 2 are left out)")
    parser.add_argument("--beats", type=int, default=1, help="heartbeats per agent in each flush")
    parser.add_argument("--shared-buffers", default="2GB", help="server shared_buffers (default 2GB)")
    args = parser.parse_args(argv)
    settings = {"shared_buffers": f"'{args.shared_buffers}'", "max_wal_size": "'8GB'"}
    with temporary_cluster(settings, prefix="pybatch-variants-") as cluster:
        if args.table == "minimal":
            with db.connect(cluster.url()) as conn:
                migrate.apply(conn)
        with bench_target(cluster.url(), args.table) as target, db.connect(target) as conn:
            reset_agents(conn, args.agents, args.table)
            row = conn.execute(
                "SELECT pg_relation_size('public.workspace_agents') / current_setting('block_size')::int,"
                " count(*) FROM public.workspace_agents"
            ).fetchone()
            assert row is not None
            print(f"{args.agents} agents on {row[0]} pages: {row[1] / row[0]:.1f} rows per page", flush=True)
            ids = agent_ids(args.agents)
            pid = conn.info.backend_pid
            log = RoundLog(args.variants, SETTLE_ROUNDS)
            for number in range(1, args.rounds + 1):
                for variant in args.variants:
                    apply(conn, variant)
                    stage_every_agent(conn, ids, args.beats)
                    before = backend_cpu_ms(pid)
                    result = flush(conn)
                    cpu = backend_cpu_ms(pid) - before
                    if not result.ok or result.agents_updated != args.agents:
                        raise SystemExit(f"round {number} of {variant}: {result}")
                    duration = result.duration.total_seconds() * 1000
                    log.add(number, variant, duration, cpu, f"{result.passes} passes, {result.hot_updates} HOT")
            log.print_medians()


if __name__ == "__main__":
    main(sys.argv[1:])
