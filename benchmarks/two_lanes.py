"""What merging on two cores would give: the passes of one flush split into two lanes, measured.

    .venv/bin/python benchmarks/two_lanes.py --agents 100000

A prototype measurement, not a feature: pybatch's flush is one session, so one core. Here the
hand-off numbers each agent's pass within its heap page as now, and also puts the pages into two
lanes by the parity of their page number (pass_no = 2 × (k - 1) + lane + 1: lane 0 takes the odd
pass numbers, lane 1 the even ones), so no page is in both lanes. Three ways to flush, round by
round on one server, with the same staging:

- `procedure`: the flush as shipped (CALL pybatch.flush_in_passes(), one lane);
- `one-lane`: the two-lane numbering, its passes one after another in one session;
- `two-lanes`: the same passes, lane 0 and lane 1 of each round at once in two sessions, both
  committed before the next round starts. The lockstep is what keeps the updates HOT: a pass
  can prune the old row versions of its pages only once no snapshot older than their commit is
  left, and the other lane's statement would hold one.

The two lane modes call the internal merge of one pass (pybatch.merge_pass_in) directly, as the
superuser: none of the flush's bookkeeping (flush_log per pass, deferral, failure judging). Prints
each flush (wall time, CPU of the flushing backends from /proc, passes, HOT share of its updates),
then the medians per mode, the first two rounds left out. A temporary cluster with fsync on.
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
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

ROOT = Path(__file__).resolve().parents[1]
DRAIN = ROOT / "sql/routines/flush/drain_into.sql"
SETTLE_ROUNDS = 2
MODES = ("procedure", "one-lane", "two-lanes")
# The page of a row, and its rank in the page: as drain_into.sql writes them.
PAGE = "(l.row_at::text::point)[0]"
RANK = f"pg_catalog.row_number() OVER (\n                       PARTITION BY {PAGE} ORDER BY l.row_at)"
# One pass, in its own transaction (autocommit): how many rows it updated.
PASS = "SELECT m.updated FROM pybatch.merge_pass_in('pybatch.pending', 'public.workspace_agents', %s, NULL) m"
COUNTERS = (
    "SELECT pg_catalog.pg_stat_get_tuples_updated('public.workspace_agents'::regclass),"
    " pg_catalog.pg_stat_get_tuples_hot_updated('public.workspace_agents'::regclass)"
)


def two_lane_drain() -> str:
    """drain_into.sql with the two-lane numbering; fails loudly if that file changed shape."""
    text = DRAIN.read_text()
    numbered = f"{RANK}::integer AS pass_no,"
    if text.count(numbered) != 1:
        raise SystemExit(f"{DRAIN}: the pass numbering is not where this benchmark expects it")
    lanes = f"(({RANK} - 1) * 2 + ({PAGE})::bigint %% 2 + 1)::integer AS pass_no,"
    return text.replace(numbered, lanes)


def run_pass(conn: psycopg.Connection, pass_no: int, into: list[int]) -> None:
    row = conn.execute(PASS, (pass_no,)).fetchone()
    assert row is not None
    into.append(int(row[0]))


def updates(*sessions: psycopg.Connection) -> tuple[int, int]:
    """The table's updates and HOT updates so far, with every session's own counts sent first
    (a backend sends them once idle, at most once a second unless forced)."""
    for conn in sessions:
        conn.execute("SELECT pg_catalog.pg_stat_force_next_flush()")  # sent before the next command
    row = sessions[0].execute(COUNTERS).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def lanes_flush(lane0: psycopg.Connection, lane1: psycopg.Connection, together: bool) -> tuple[int, int]:
    """The hand-off, then every pass; (passes, updated)."""
    lane0.execute("SELECT * FROM pybatch.flush_begin()")
    row = lane0.execute("SELECT pg_catalog.max(pass_no) FROM pybatch.pending").fetchone()
    last = int(row[0] or 0) if row else 0
    done: list[int] = []
    for first in range(1, last + 1, 2):
        if together and first + 1 <= last:
            other: list[int] = []
            thread = threading.Thread(target=run_pass, args=(lane1, first + 1, other))
            thread.start()
            run_pass(lane0, first, done)
            thread.join()
            done.extend(other)
        else:
            run_pass(lane0, first, done)
            if first + 1 <= last:
                run_pass(lane0, first + 1, done)
    left = lane0.execute("SELECT pg_catalog.count(*) FROM pybatch.pending").fetchone()
    if left != (0,):
        raise SystemExit(f"{left} agents left pending")
    lane0.execute("UPDATE pybatch.flush_log SET completed_at = pg_catalog.now() WHERE completed_at IS NULL")
    lane0.execute("SELECT pybatch.flush_tidy()")
    return last, sum(done)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--agents", type=int, default=100_000)
    parser.add_argument("--share", type=float, default=1.0, help="fraction of the fleet staged per flush")
    parser.add_argument("--table", choices=("coder", "minimal"), default="coder")
    parser.add_argument("--rounds", type=int, default=7, help="rounds per mode (the first 2 are left out)")
    parser.add_argument("--shared-buffers", default="2GB", help="server shared_buffers (default 2GB)")
    args = parser.parse_args(argv)
    shipped, lanes = DRAIN.read_text(), two_lane_drain()
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
            log = RoundLog(MODES, SETTLE_ROUNDS)
            for number in range(1, args.rounds + 1):
                for mode in MODES:
                    lane0.execute(shipped if mode == "procedure" else lanes)
                    stage_every_agent(lane0, ids if staged == args.agents else rng.sample(ids, staged))
                    counted = updates(lane0, lane1)
                    cpu_before = sum(backend_cpu_ms(pid) for pid in pids)
                    began = time.monotonic()
                    if mode == "procedure":
                        result = flush(lane0)
                        if not result.ok:
                            raise SystemExit(f"round {number}: {result}")
                        passes, updated = result.passes, result.agents_updated
                    else:
                        passes, updated = lanes_flush(lane0, lane1, together=mode == "two-lanes")
                    wall = (time.monotonic() - began) * 1000
                    cpu = sum(backend_cpu_ms(pid) for pid in pids) - cpu_before
                    total, hot = (after - before for after, before in zip(updates(lane0, lane1), counted, strict=True))
                    if updated != staged:
                        raise SystemExit(f"round {number} {mode}: {updated} agents updated, {staged} staged")
                    log.add(number, mode, wall, cpu, f"{passes} passes, HOT {hot / total:.3f}")
            log.print_medians()


if __name__ == "__main__":
    main(sys.argv[1:])
