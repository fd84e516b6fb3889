"""How long do writers wait while staging drains? Compare the ways to drain it.

Strategies, run one after another against the same server and the same freshly
reset workspace_agents table:

- lock_truncate:     LOCK staging ACCESS EXCLUSIVE, merge, TRUNCATE (writers wait for the merge).
- delete_returning:  pybatch's flush as shipped: CALL pybatch.flush_in_passes() (DELETE ...
                     RETURNING hand-off, committed passes).
- rotation:          two partitions by generation; a flush switches writers to the
                     other one, then locks, merges and truncates the old one.
- truncate_unlocked: (only with --strategies) merge then TRUNCATE without a lock;
                     known to lose rows, it shows that the loss check can fail.

Writers are N threads, one autocommit psycopg connection each, inserting one row
per heartbeat at a fixed total rate. Insert latency is measured from the time
the insert was due (like pgbench --rate), so an insert queued behind a blocked
one counts its wait too; "service" is the time of the INSERT call alone.
A sampler also counts, server side every 10 ms, writers waiting on a lock and
what holds it: that shows blocking even when the shared machine's CPU load
inflates every latency.
Losslessness: rows the writers committed = rows the flushes merged + rows left
in staging, and every agent's last_connected_at equals its newest beat sent.

Every strategy merges with pybatch's own functions (never a copy of the merge), so the
benchmark measures whatever the migrations install. The SQL lives in
benchmarks/drain_strategies/*.sql. With --dsn the database must
be a scratch one: each strategy empties public.workspace_agents.

    .venv/bin/python benchmarks/drain_strategies.py [--dsn DSN] [--agents 10000]
        [--rate 3000] [--writers 4] [--seconds 20] [--flush-every 2s] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from benchdb import database
from psycopg import sql
from psycopg.abc import Query

from pybatch import db
from pybatch.durations import parse_duration
from pybatch.errors import ConfigError, PybatchError
from pybatch.flush import flush

SQL_DIR = Path(__file__).resolve().parent / "drain_strategies"
DEFAULT_STRATEGIES = ("lock_truncate", "delete_returning", "rotation")
ALL_STRATEGIES = (*DEFAULT_STRATEGIES, "truncate_unlocked")
# pybatch's staging table, and the rotation's partitioned parent.
STAGING = ("pybatch", "heartbeats")
WRITER_APP = "drain-bench-writer"
LOCK_SAMPLE_S = 0.01
ROTATING_STAGING = ("drain_bench", "staging")


def read_sql(name: str) -> str:
    return (SQL_DIR / name).read_text(encoding="utf-8")


# -- strategies ----------------------------------------------------------------------


def flush_lock_truncate(conn: psycopg.Connection) -> int:
    return _one_int(conn, "SELECT drain_bench.flush_truncate(true)")


def flush_truncate_unlocked(conn: psycopg.Connection) -> int:
    return _one_int(conn, "SELECT drain_bench.flush_truncate(false)")


def flush_delete_returning(conn: psycopg.Connection) -> int:
    """pybatch's default path as shipped: pybatch.flush.flush() on an idle connection runs
    CALL pybatch.flush_in_passes() (hand-off by DELETE ... RETURNING, then committed passes)."""
    result = flush(conn)
    if not result.ok:
        raise PybatchError(f"pybatch flush did not flush: skipped={result.skipped} error={result.error}")
    return int(result.rows_staged or 0)


def flush_rotation(conn: psycopg.Connection) -> int:
    return _one_int(conn, "CALL drain_bench.flush_rotation()")


def _one_int(conn: psycopg.Connection, query: Query) -> int:
    row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])


@dataclass(frozen=True)
class Strategy:
    name: str
    staging: tuple[str, str]
    flush: Callable[[psycopg.Connection], int]
    # Flushes needed after writers stop to empty staging (rotation drains one slot per flush).
    final_flushes: int = 1


STRATEGIES = {
    s.name: s
    for s in (
        Strategy("lock_truncate", STAGING, flush_lock_truncate),
        Strategy("delete_returning", STAGING, flush_delete_returning),
        Strategy("rotation", ROTATING_STAGING, flush_rotation, final_flushes=2),
        Strategy("truncate_unlocked", STAGING, flush_truncate_unlocked),
    )
}


# -- one run ----------------------------------------------------------------------------


@dataclass
class WriterStats:
    due_latency_s: list[float] = field(default_factory=list)
    service_s: list[float] = field(default_factory=list)
    newest_beat: dict[uuid.UUID, datetime] = field(default_factory=dict)
    error: str | None = None


@dataclass
class FlushStats:
    durations_s: list[float] = field(default_factory=list)
    rows: int = 0
    error: str | None = None


@dataclass(frozen=True)
class Result:
    strategy: str
    inserts: int
    insert_p50_ms: float
    insert_p99_ms: float
    insert_p999_ms: float
    insert_max_ms: float
    service_p99_ms: float
    service_max_ms: float
    lock_wait_samples_pct: float  # share of sampler ticks with at least one writer waiting on a lock
    lock_wait_max: int  # most writers seen waiting on a lock at once
    blocked_by: str  # "<lock> by <holder>" seen while writers waited
    flushes: int
    flush_p50_ms: float
    flush_max_ms: float
    rows_merged: int
    rows_left: int
    rows_lost: int
    agents_wrong: int
    load_1m: float  # machine load average at the end: the box is shared, so read numbers against it


def writer(
    dsn: str,
    staging: tuple[str, str],
    agents: Sequence[uuid.UUID],
    rate: float,
    start: float,
    stop: float,
    stats: WriterStats,
) -> None:
    """Insert one heartbeat every 1/rate s from `start` to `stop`, cycling through `agents`."""
    insert = sql.SQL("INSERT INTO {} (agent_id, replica_id, beat_at) VALUES (%s, %s, %s)").format(
        sql.Identifier(*staging)
    )
    replica = uuid.uuid4()
    try:
        with db.connect(dsn) as conn:
            conn.execute("SELECT set_config('application_name', %s, false)", (WRITER_APP,))
            i = 0
            while (due := start + i / rate) < stop:
                if (wait := due - time.monotonic()) > 0:
                    time.sleep(wait)
                agent = agents[i % len(agents)]
                beat_at = datetime.now(UTC)
                begun = time.monotonic()
                conn.execute(insert, (agent, replica, beat_at), prepare=True)
                done = time.monotonic()
                stats.service_s.append(done - begun)
                stats.due_latency_s.append(done - due)
                stats.newest_beat[agent] = beat_at
                i += 1
    except psycopg.Error as exc:
        stats.error = db.first_line(exc)


def flusher(dsn: str, strategy: Strategy, every: float, start: float, stop: float, stats: FlushStats) -> None:
    try:
        with db.connect(dsn) as conn:
            n = 1
            while (due := start + n * every) < stop:
                time.sleep(max(0.0, due - time.monotonic()))
                begun = time.monotonic()
                stats.rows += strategy.flush(conn)
                stats.durations_s.append(time.monotonic() - begun)
                n += 1
    except (psycopg.Error, PybatchError) as exc:
        stats.error = str(exc)


def lock_sampler(dsn: str, stop: float, waits: list[int], blockers: set[str]) -> None:
    """Every LOCK_SAMPLE_S, count writers waiting on a lock and note who blocks them
    (server side, so CPU starvation of the client does not show up as waiting)."""
    query = read_sql("lock_waits.sql")
    with db.connect(dsn) as conn:
        while time.monotonic() < stop:
            row = conn.execute(query, {"writer_app": WRITER_APP}).fetchone()
            assert row is not None
            waits.append(row[0])
            blockers.update(row[1])
            time.sleep(LOCK_SAMPLE_S)


def run_strategy(dsn: str, strategy: Strategy, args: argparse.Namespace) -> Result:
    with db.connect(dsn) as conn:
        agents = [row[0] for row in conn.execute("SELECT drain_bench.reset(%s)", (args.agents,))]
        conn.execute("VACUUM ANALYZE public.workspace_agents, pybatch.heartbeats")

    writers = [WriterStats() for _ in range(args.writers)]
    flushes = FlushStats()
    start = time.monotonic() + 0.5  # time for every thread to connect
    stop = start + args.seconds
    threads = [
        threading.Thread(
            target=writer,
            args=(dsn, strategy.staging, agents[w :: args.writers], args.rate / args.writers, start, stop, stats),
        )
        for w, stats in enumerate(writers)
    ]
    threads.append(threading.Thread(target=flusher, args=(dsn, strategy, args.flush_every, start, stop, flushes)))
    lock_waits: list[int] = []
    blockers: set[str] = set()
    threads.append(threading.Thread(target=lock_sampler, args=(dsn, stop, lock_waits, blockers)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for problem in [w.error for w in writers] + [flushes.error]:
        if problem:
            raise PybatchError(f"{strategy.name}: {problem}")

    with db.connect(dsn) as conn:
        merged = flushes.rows + sum(strategy.flush(conn) for _ in range(strategy.final_flushes))
        left = _one_int(conn, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(*strategy.staging)))
        stored: dict[uuid.UUID, datetime | None] = dict(
            conn.execute("SELECT id, last_connected_at FROM public.workspace_agents").fetchall()
        )
    newest: dict[uuid.UUID, datetime] = {}
    for w in writers:
        newest.update(w.newest_beat)  # each agent belongs to one writer
    due = sorted(x for w in writers for x in w.due_latency_s)
    service = sorted(x for w in writers for x in w.service_s)
    flush_times = sorted(flushes.durations_s)
    return Result(
        strategy=strategy.name,
        inserts=len(due),
        insert_p50_ms=_ms(due, 0.5),
        insert_p99_ms=_ms(due, 0.99),
        insert_p999_ms=_ms(due, 0.999),
        insert_max_ms=_ms(due, 1.0),
        service_p99_ms=_ms(service, 0.99),
        service_max_ms=_ms(service, 1.0),
        lock_wait_samples_pct=100 * sum(1 for n in lock_waits if n) / max(1, len(lock_waits)),
        lock_wait_max=max(lock_waits, default=0),
        blocked_by=",".join(sorted(blockers)) or "-",
        flushes=len(flush_times),
        flush_p50_ms=_ms(flush_times, 0.5),
        flush_max_ms=_ms(flush_times, 1.0),
        rows_merged=merged,
        rows_left=left,
        rows_lost=len(due) - merged - left,
        agents_wrong=sum(1 for agent, beat in newest.items() if stored.get(agent) != beat),
        load_1m=os.getloadavg()[0],
    )


def _ms(ordered: Sequence[float], q: float) -> float:
    if not ordered:
        return float("nan")
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- set-up, output, main ------------------------------------------------------------


def check_scratch(dsn: str) -> None:
    """Refuse to empty a workspace_agents that pybatch did not create (a real deployment's)."""
    with db.connect(dsn) as conn, db.translated("cannot read pybatch.settings"):
        row = conn.execute("SELECT created_workspace_agents FROM pybatch.settings").fetchone()
    if not row or not row[0]:
        raise ConfigError(
            "--dsn: public.workspace_agents was not created by pybatch; "
            "the benchmark empties it, so point it at a scratch database"
        )


def print_table(results: Sequence[Result], args: argparse.Namespace) -> None:
    print(
        f"\n{args.agents} agents, {args.rate:g} inserts/s from {args.writers} writers, "
        f"{args.seconds:g} s per strategy, flush every {args.flush_every:g} s"
    )
    print(
        "insert latency from when the insert was due (ms); svc = INSERT call alone (ms);\n"
        f"lockwait% = share of {LOCK_SAMPLE_S * 1000:g} ms samples with a writer waiting on a lock; "
        "lockwait max = most writers waiting at once\n"
    )
    header = (
        "strategy",
        "inserts",
        "p50",
        "p99",
        "p99.9",
        "max",
        "svc p99",
        "svc max",
        "lockwait%",
        "lockwait max",
        "blocked by",
        "flushes",
        "flush p50",
        "flush max",
        "merged",
        "left",
        "lost",
        "agents wrong",
        "load",
    )
    rows = [
        (
            r.strategy,
            str(r.inserts),
            *(
                f"{v:.2f}"
                for v in (
                    r.insert_p50_ms,
                    r.insert_p99_ms,
                    r.insert_p999_ms,
                    r.insert_max_ms,
                    r.service_p99_ms,
                    r.service_max_ms,
                    r.lock_wait_samples_pct,
                )
            ),
            str(r.lock_wait_max),
            r.blocked_by,
            str(r.flushes),
            f"{r.flush_p50_ms:.1f}",
            f"{r.flush_max_ms:.1f}",
            str(r.rows_merged),
            str(r.rows_left),
            str(r.rows_lost),
            str(r.agents_wrong),
            f"{r.load_1m:.1f}",
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print(
            "  ".join(
                cell.rjust(width) if i else cell.ljust(width)
                for i, (cell, width) in enumerate(zip(row, widths, strict=True))
            )
        )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dsn", help="a scratch database with pybatch migrated (default: a temporary local cluster)")
    parser.add_argument("--agents", type=int, default=10_000, help="agents in workspace_agents (default 10000)")
    parser.add_argument("--rate", type=float, default=3000, help="total inserts per second (default 3000)")
    parser.add_argument("--writers", type=int, default=4, help="writer threads/connections (default 4)")
    parser.add_argument("--seconds", type=float, default=20, help="run time per strategy (default 20)")
    parser.add_argument("--flush-every", default="2s", help="flush interval, e.g. 2s or 500ms (default 2s)")
    parser.add_argument(
        "--strategies",
        default=",".join(DEFAULT_STRATEGIES),
        help=f"comma-separated, from {', '.join(ALL_STRATEGIES)} (default: the first three)",
    )
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)
    args.flush_every = parse_duration(args.flush_every, name="--flush-every")
    args.strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    for name in args.strategies:
        if name not in STRATEGIES:
            raise ConfigError(f"--strategies: unknown strategy {name!r} (choose from {', '.join(ALL_STRATEGIES)})")
    for flag in ("agents", "rate", "writers", "seconds"):
        if getattr(args, flag) <= 0:
            raise ConfigError(f"--{flag}: {getattr(args, flag)} must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        with contextlib.ExitStack() as stack:
            if args.dsn:
                check_scratch(args.dsn)
                dsn = args.dsn
            else:
                print("starting a temporary PostgreSQL cluster ...", file=sys.stderr)
                dsn = stack.enter_context(database(None))
            with db.connect(dsn) as conn:
                conn.execute(read_sql("setup.sql"))
            results = []
            for name in args.strategies:
                print(f"running {name} for {args.seconds:g} s ...", file=sys.stderr)
                results.append(run_strategy(dsn, STRATEGIES[name], args))
            with db.connect(dsn) as conn:
                conn.execute(read_sql("teardown.sql"))
    except PybatchError as exc:
        print(f"drain_strategies: {exc}", file=sys.stderr)
        return 1
    print_table(results, args)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    return 1 if any(r.rows_lost or r.agents_wrong for r in results if r.strategy != "truncate_unlocked") else 0


if __name__ == "__main__":
    sys.exit(main())
