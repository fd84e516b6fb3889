"""`pybatch bench --flush-rounds N`: the cost of one flush of every agent, round after round.

Each round stages one heartbeat per agent (one COPY) and times one pybatch.flush(). The
first round after a reset rewrites freshly packed pages (the worst case); later rounds
show the steady state, where the table's fillfactor and HOT pruning decide the cost.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg

from pybatch import db
from pybatch._core import COPY_BEATS
from pybatch.bench.fleet import REPLICAS, agent_id
from pybatch.bench.measure import read_counters
from pybatch.bench.runner import check_bench_database, reset_agents, set_fillfactor
from pybatch.bench.strategies import publish_stats
from pybatch.errors import FlushFailed
from pybatch.flush import flush


@dataclass(frozen=True)
class FlushRound:
    round: int
    agents_updated: int
    duration_ms: float  # pybatch.flush()'s own duration (server side)
    wall_ms: float  # the call, as the caller waits for it
    wal_bytes_per_row: float
    hot_share: float | None


def run_flush_rounds(
    dsn: str, agents: int, rounds: int, *, fillfactor: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    say = progress or (lambda message: None)
    results: list[FlushRound] = []
    with db.connect(dsn) as conn:
        check_bench_database(conn, agents)
        if fillfactor is not None:
            set_fillfactor(conn, fillfactor)
        reset_agents(conn, agents)
        ids = [agent_id(i) for i in range(agents)]
        for number in range(1, rounds + 1):
            stage_every_agent(conn, ids)
            before = read_counters(conn)
            began = time.monotonic()
            result = flush(conn)
            wall = time.monotonic() - began
            if not result.ok:
                raise FlushFailed(f"flush round {number} did not run: {result.error or 'skipped'}")
            publish_stats(conn)
            after = read_counters(conn).minus(before)
            rows = int(result.agents_updated or 0)
            results.append(FlushRound(
                round=number, agents_updated=rows,
                duration_ms=round(result.duration.total_seconds() * 1000, 1), wall_ms=round(wall * 1000, 1),
                wal_bytes_per_row=round(after.wal_bytes / rows, 1) if rows else 0.0,
                hot_share=round(after.hot_updates / after.row_updates, 4) if after.row_updates else None,
            ))
            say(f"flush round {number}: {rows} agents in {results[-1].duration_ms:g} ms, "
                f"HOT {results[-1].hot_share}, {results[-1].wal_bytes_per_row:g} WAL bytes/row")
    steady = results[2:] or results[-1:]
    return {
        "agents": agents,
        "fillfactor": fillfactor,
        "rounds": [asdict(r) for r in results],
        "first_round_ms": results[0].duration_ms,
        "steady_median_ms": statistics.median(r.duration_ms for r in steady),
        "steady_max_ms": max(r.duration_ms for r in steady),
        "steady_hot_share": statistics.median(r.hot_share or 0.0 for r in steady),
        "steady_wal_bytes_per_row": statistics.median(r.wal_bytes_per_row for r in steady),
    }


def stage_every_agent(conn: psycopg.Connection, ids: list[Any]) -> None:
    """One heartbeat per agent, stamped now, in one COPY (as buffered clients would)."""
    now = datetime.now(UTC)
    with db.translated("cannot stage heartbeats"), conn.cursor() as cur, cur.copy(COPY_BEATS) as copy:
        copy.set_types(["uuid", "uuid", "timestamptz"])
        for index, agent in enumerate(ids):
            copy.write_row((agent, REPLICAS[index % len(REPLICAS)], now))
