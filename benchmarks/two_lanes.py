"""What a second core gives a flush: one lane against two, measured round by round.

    .venv/bin/python benchmarks/two_lanes.py --agents 100000

Two ways to flush, alternating round by round on one server, with the same staging:

- `one-lane`: pybatch's default flush (CALL pybatch.flush_in_passes(), one session);
- `two-lanes`: pybatch.flush.flush_in_lanes() on two sessions. The hand-off puts each heap page
  in one of two lanes; each round, the two sessions merge their lane's pass at once, and both
  commit before the next round (sql/routines/flush/flush_lane_pass.sql).

Prints each flush (wall time, CPU of the flushing backends from /proc, passes, HOT share of its
updates), then the medians per mode, the first two rounds left out. A temporary cluster with
fsync on.
"""

from __future__ import annotations

import argparse
import random
import sys
import time

import psycopg

from pybatch import db, migrate
from pybatch.bench.fleet import agent_ids
from pybatch.bench.fleet_run import reset_agents
from pybatch.bench.flush_rounds import RoundLog, stage_every_agent
from pybatch.bench.measure import backend_cpu_ms
from pybatch.bench.target import bench_target
from pybatch.flush import flush_in_lanes
from pybatch.local import temporary_cluster

SETTLE_ROUNDS = 2
MODES = {"one-lane": 1, "two-lanes": 2}
COUNTERS = (
    "SELECT pg_catalog.pg_stat_get_tuples_updated('public.workspace_agents'::regclass),"
    " pg_catalog.pg_stat_get_tuples_hot_updated('public.workspace_agents'::regclass)"
)


def updates(*sessions: psycopg.Connection) -> tuple[int, int]:
    """The table's updates and HOT updates so far, with every session's own counts sent first
    (a backend sends them once idle, at most once a second unless forced)."""
    for conn in sessions:
        conn.execute("SELECT pg_catalog.pg_stat_force_next_flush()")  # sent before the next command
    row = sessions[0].execute(COUNTERS).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--agents", type=int, default=100_000)
    parser.add_argument("--share", type=float, default=1.0, help="fraction of the fleet staged per flush")
    parser.add_argument("--table", choices=("coder", "minimal"), default="coder")
    parser.add_argument("--rounds", type=int, default=7, help="rounds per mode (the first 2 are left out)")
    parser.add_argument("--shared-buffers", default="2GB", help="server shared_buffers (default 2GB)")
    args = parser.parse_args(argv)
    settings = {"shared_buffers": f"'{args.shared_buffers}'", "max_wal_size": "'8GB'"}
    with temporary_cluster(settings, prefix="pybatch-lanes-") as cluster:
        if args.table == "minimal":
            with db.connect(cluster.url()) as conn:
                migrate.apply(conn)
        with (
            bench_target(cluster.url(), args.table) as target,
            db.connect(target) as lane0,
            db.connect(target) as lane1,
        ):
            reset_agents(lane0, args.agents, args.table)
            ids, rng = agent_ids(args.agents), random.Random(1)
            staged = max(1, round(args.agents * args.share))
            pids = (lane0.info.backend_pid, lane1.info.backend_pid)
            log = RoundLog(tuple(MODES), SETTLE_ROUNDS)
            for number in range(1, args.rounds + 1):
                for mode, lanes in MODES.items():
                    stage_every_agent(lane0, ids if staged == args.agents else rng.sample(ids, staged))
                    counted = updates(lane0, lane1)
                    cpu_before = sum(backend_cpu_ms(pid) for pid in pids)
                    began = time.monotonic()
                    result = flush_in_lanes([lane0, lane1][:lanes])
                    wall = (time.monotonic() - began) * 1000
                    cpu = sum(backend_cpu_ms(pid) for pid in pids) - cpu_before
                    total, hot = (after - before for after, before in zip(updates(lane0, lane1), counted, strict=True))
                    if not result.ok or result.agents_updated != staged:
                        raise SystemExit(f"round {number} {mode}: {result}")
                    log.add(number, mode, wall, cpu, f"{result.passes} passes, HOT {hot / max(total, 1):.3f}")
            log.print_medians()


if __name__ == "__main__":
    main(sys.argv[1:])
