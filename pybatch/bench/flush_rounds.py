"""`pybatch bench --flush-rounds N`: the cost of one flush of every agent, round after round.

Each round stages one heartbeat per agent (one COPY) and runs one flush through
pybatch.flush.flush(conn), in each mode asked for, each from a freshly reset table:

- passes: on an idle connection, i.e. CALL pybatch.flush_in_passes(), the default path
          (committed passes, at most one row per heap page each);
- single: inside a transaction, i.e. SELECT pybatch.flush(): the same steps in one
          transaction, for comparison.

The first rounds after a reset rewrite freshly packed pages; the steady state is what
follows the first STEADY_AFTER rounds: duration, HOT share, WAL per row, and how much the
heap and each index grew over those rounds.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from pybatch import db
from pybatch._core import COPY_BEATS
from pybatch.bench.fleet import REPLICAS, agent_ids
from pybatch.bench.fleet_run import check_bench_database, reset_agents, set_fillfactor
from pybatch.bench.measure import keep_wal, read_counters, wal_records, walinspect_schema
from pybatch.bench.target import bench_target, growth, is_scratch, table_sizes
from pybatch.errors import ConfigError, FlushFailed
from pybatch.flush import flush

FLUSH_MODES = {
    "passes": "CALL pybatch.flush_in_passes() (the default path)",
    "single": "SELECT pybatch.flush() in one transaction",
}
STEADY_AFTER = 5  # rounds of warm-up: the steady state is measured after them


@dataclass(frozen=True)
class FlushRound:
    round: int
    agents_updated: int
    duration_ms: float  # the flush's own duration (server side, pybatch.flush_result.duration)
    wall_ms: float  # the call, as the caller waits for it
    passes: int
    hot_share: float | None  # of the flush's updates (pybatch.flush_result.hot_updates)
    wal_bytes_per_row: float
    heap_bytes: int
    index_bytes: int


def check_modes(modes: Sequence[str]) -> tuple[str, ...]:
    if not modes:
        raise ConfigError(f"flush modes: name at least one of {', '.join(FLUSH_MODES)}")
    for mode in modes:
        if mode not in FLUSH_MODES:
            raise ConfigError(f"flush modes: unknown mode {mode!r} (choose from {', '.join(FLUSH_MODES)})")
    return tuple(modes)


def run_flush_rounds(
    dsn: str,
    agents: int,
    rounds: int,
    *,
    fillfactor: int | None = None,
    table: str = "coder",
    modes: Sequence[str] = tuple(FLUSH_MODES),
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    say = progress or (lambda message: None)
    modes = check_modes(modes)
    if rounds < 1:
        raise ConfigError(f"flush rounds: {rounds} must be at least 1")
    results: dict[str, Any] = {}
    with bench_target(dsn, table, say) as target:
        with db.connect(target) as conn:
            check_bench_database(conn, agents)
            if fillfactor is not None:
                set_fillfactor(conn, fillfactor)
            row = conn.execute(
                "SELECT COALESCE((SELECT pg_catalog.split_part(o, '=', 2)::int FROM pg_catalog.unnest(c.reloptions) o "
                "WHERE o LIKE 'fillfactor=%%'), 100) FROM pg_catalog.pg_class c "
                "WHERE c.oid = 'public.workspace_agents'::pg_catalog.regclass"
            ).fetchone()
            table_fillfactor = int(row[0]) if row else None
        for mode in modes:
            results[mode] = _run_mode(target, agents, rounds, mode, table, say)
    return {
        "agents": agents,
        "rounds": rounds,
        "table": table,
        "fillfactor": table_fillfactor,
        "steady_after": STEADY_AFTER,
        "modes": results,
    }


def _run_mode(dsn: str, agents: int, rounds: int, mode: str, table: str, say: Callable[[str], None]) -> dict[str, Any]:
    results: list[FlushRound] = []
    sizes_at: dict[int, dict[str, Any]] = {}
    steady_wal: list[int] = []  # WAL positions around the steady rounds
    with db.connect(dsn) as conn:
        say(f"[{mode}] resetting {agents} agents")
        reset_agents(conn, agents, table)
        sizes_at[0] = table_sizes(conn)
        walinspect = walinspect_schema(conn, may_install=is_scratch(conn))
        if walinspect is not None:
            keep_wal(conn)
        ids = agent_ids(agents)
        for number in range(1, rounds + 1):
            stage_every_agent(conn, ids)
            before = read_counters(conn)
            if number == steady_start(rounds) + 1:
                steady_wal.append(before.wal_bytes)
            began = time.monotonic()
            if mode == "passes":
                result = flush(conn)  # idle connection: the committed passes
            else:
                with conn.transaction():
                    result = flush(conn)  # inside a transaction: SELECT pybatch.flush()
            wall = time.monotonic() - began
            if not result.ok:
                raise FlushFailed(f"flush round {number} ({mode}) did not run: {result.error or 'skipped'}")
            wal = read_counters(conn).wal_bytes - before.wal_bytes
            sizes_at[number] = table_sizes(conn)
            rows = int(result.agents_updated or 0)
            results.append(
                FlushRound(
                    round=number,
                    agents_updated=rows,
                    duration_ms=round(result.duration.total_seconds() * 1000, 1),
                    wall_ms=round(wall * 1000, 1),
                    passes=int(result.passes or 0),
                    hot_share=round(int(result.hot_updates or 0) / rows, 4) if rows else None,
                    wal_bytes_per_row=round(wal / rows, 1) if rows else 0.0,
                    heap_bytes=sizes_at[number]["heap_bytes"],
                    index_bytes=sum(sizes_at[number]["index_bytes"].values()),
                )
            )
            r = results[-1]
            say(
                f"[{mode}] round {number}: {rows} agents in {r.duration_ms:g} ms, {r.passes} passes, "
                f"HOT {r.hot_share}, {r.wal_bytes_per_row:g} WAL B/row, heap {r.heap_bytes // 1024} kB"
            )
        steady_wal.append(read_counters(conn).wal_bytes)
        steady_rows = sum(r.agents_updated for r in results[steady_start(rounds) :])
        records = wal_records(conn, walinspect, steady_wal[0], steady_wal[-1], steady_rows)
    # Each flush updates its pybatch.flush_log row once per pass and once at its end.
    log_versions = sum(r.passes + 1 for r in results[steady_start(rounds) :])
    return {
        **summarise(results, sizes_at),
        "steady_wal_records_per_row": records,
        "steady_log_row_versions_per_row": round(log_versions / steady_rows, 4) if steady_rows else None,
    }


def steady_start(rounds: int) -> int:
    """How many rounds the steady state leaves out: STEADY_AFTER, or none when there are no more."""
    return STEADY_AFTER if rounds > STEADY_AFTER else 0


def summarise(results: list[FlushRound], sizes_at: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Steady state: the rounds after the first STEADY_AFTER (all rounds if there are no more)."""
    start = steady_start(len(results))
    steady = results[start:]
    rows = sum(r.agents_updated for r in steady)
    hot = sum(round((r.hot_share or 0) * r.agents_updated) for r in steady)
    wal = sum(r.wal_bytes_per_row * r.agents_updated for r in steady)
    return {
        "rounds": [asdict(r) for r in results],
        "first_round_ms": results[0].duration_ms,
        "steady_rounds": len(steady),
        "steady_median_ms": statistics.median(r.duration_ms for r in steady),
        "steady_max_ms": max(r.duration_ms for r in steady),
        "steady_passes": statistics.median(r.passes for r in steady),
        "steady_hot_share": round(hot / rows, 4) if rows else None,
        "steady_wal_bytes_per_row": round(wal / rows, 1) if rows else None,
        "steady_growth": growth(sizes_at[start], sizes_at[len(results)]),
        "loaded": {"heap_bytes": sizes_at[0]["heap_bytes"], "index_bytes": sum(sizes_at[0]["index_bytes"].values())},
    }


def stage_every_agent(conn: psycopg.Connection, ids: list[Any], beats: int = 1) -> None:
    """`beats` heartbeats per agent, a millisecond apart, the last stamped now, in one COPY (as
    buffered clients would; more than one as after a flush that fell behind)."""
    now = datetime.now(UTC)
    with db.translated("cannot stage heartbeats"), conn.cursor() as cur, cur.copy(COPY_BEATS) as copy:
        copy.set_types(["uuid", "uuid", "timestamptz"])
        for k in range(beats):
            at = now - timedelta(milliseconds=beats - 1 - k)
            for index, agent in enumerate(ids):
                copy.write_row((agent, REPLICAS[index % len(REPLICAS)], at))


class RoundLog:
    """The rounds of a benchmark script that times flushes, variant after variant: prints each
    round, keeps those after the settling ones, and prints the medians of each variant."""

    def __init__(self, variants: Sequence[str], settle: int) -> None:
        self.settle = settle
        self.kept: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}

    def add(self, number: int, variant: str, duration_ms: float, cpu_ms: float, details: str) -> None:
        print(f"round {number} {variant}: {duration_ms:.0f} ms, CPU {cpu_ms:.0f} ms, {details}", flush=True)
        if number > self.settle:
            self.kept[variant].append((duration_ms, cpu_ms))

    def print_medians(self) -> None:
        for name, rounds in self.kept.items():
            if rounds:
                print(
                    f"{name}: median {statistics.median(r[0] for r in rounds):.0f} ms,"
                    f" CPU {statistics.median(r[1] for r in rounds):.0f} ms over {len(rounds)} rounds"
                )
