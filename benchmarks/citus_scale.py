"""Citus vs one node, in one run: writer cost and flush cost per shard.

Starts a single-node cluster and a Citus cluster (coordinator + 2 workers on this machine),
loads N agents (workspace_agents distributed by id on Citus), then for each:
  - writer path: COPY of all N heartbeats in batches of 500 and single-row INSERTs (µs per beat,
    client wall time: the coordinator routes each row to its shard);
  - flush: ROUNDS rounds of "every agent beats once, then CALL pybatch.flush_in_passes()";
    the figures of the last round (steady state), and on Citus each shard group's own time
    from pybatch.flush_log_shards.
Usage: .venv/bin/python benchmarks/citus_scale.py [AGENTS ...]   (default 20000 100000)

--search: the largest fleet each set-up sustains with staleness under 30 s (docs/scale.md).
A fleet of N agents beats as Coder's does: each agent once per 15 s (heartbeat_period), spread
evenly (agent i in second i mod 15), its beat COPied into staging by the writers within the
second (client_write_interval 1 s; 2 writer connections, the beat stamped with its scheduled
time, so a writer that falls behind shows as staleness), and a flusher runs
CALL pybatch.flush_in_passes() every 5 s (flush_interval; a flush that overruns is followed at
once by the next, as pg_cron queues it). Each run lasts --warmup seconds (one period and a
flush: every agent has beaten and been merged once) and then --measure seconds, in which the
staleness is sampled every second as

    staleness = now() - min(last_connected_at) over all agents

(all agents are healthy: none disconnects), i.e. now - last_connected_at of the oldest healthy
agent, the quantity Coder compares with its 30 s inactive timeout. A fleet is sustained when
every sample stays under 30 s and no flush failed. The end-of-run pybatch.health.worst_staleness
(period + write interval + the longest flush-to-flush wait) is printed beside it. The search per
set-up: --start agents, doubled while sustained (up to --max), then one bisection between the
last sustained size and the first that was not; a run stops early once a sample passes 45 s.
Usage: .venv/bin/python benchmarks/citus_scale.py --search [--setups single,citus]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg

from pybatch import migrate
from pybatch.flush import flush
from pybatch.local import temporary_cluster
from pybatch.local_citus import temporary_citus_cluster
from tests.citus_fixtures import AGENTS_DDL

ROUNDS = 4
SETTINGS = {"fsync": "off", "full_page_writes": "off"}


def load(url: str, n: int, distribute: bool) -> list[uuid.UUID]:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(AGENTS_DDL)
        if distribute:
            conn.execute("SELECT create_distributed_table('public.workspace_agents', 'id')")
        ids = [uuid.uuid4() for _ in range(n)]
        conn.execute("INSERT INTO public.workspace_agents (id) SELECT unnest(%s::uuid[])", (ids,))
        migrate.apply(conn)
    return ids


def copy_beats(conn: psycopg.Connection, ids: list[uuid.UUID]) -> None:
    for start in range(0, len(ids), 500):
        with conn.cursor() as cur, cur.copy("COPY pybatch.heartbeats (agent_id) FROM STDIN") as cp:
            for agent in ids[start : start + 500]:
                cp.write_row((agent,))


def timed(fn: Callable[[], None]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def measure(label: str, url: str, ids: list[uuid.UUID]) -> None:
    n = len(ids)
    with psycopg.connect(url, autocommit=True) as conn:
        copy_s = timed(lambda: copy_beats(conn, ids))
        sample = ids[:2000]

        def inserts() -> None:
            for agent in sample:
                conn.execute("INSERT INTO pybatch.heartbeats (agent_id) VALUES (%s)", (agent,))

        insert_s = timed(inserts)
        flush(conn)
        result = None
        for _ in range(ROUNDS):
            copy_beats(conn, ids)
            result = flush(conn)
        assert result is not None and result.ok, result
        shards = conn.execute(
            "SELECT count(*), max(extract(epoch FROM duration)), avg(extract(epoch FROM duration)),"
            " avg(rows_staged) FROM pybatch.flush_log_shards WHERE flush_id = %s",
            (result.flush_id,),
        ).fetchone()
    print(
        f"{label:>12} {n:>8,} agents | COPY {copy_s / n * 1e6:6.1f} us/beat | INSERT {insert_s / 2000 * 1e6:6.0f}"
        f" us/beat | flush {result.duration.total_seconds():6.2f} s ({result.passes} passes,"
        f" HOT {result.hot_updates}/{result.agents_updated})",
        end="",
    )
    if shards and shards[0]:
        print(
            f" | {shards[0]} shard groups: max {shards[1]:.2f} s, mean {shards[2]:.2f} s, {shards[3]:,.0f} agents each"
        )
    else:
        print()


def measure_costs(sizes: list[int]) -> None:
    for n in sizes:
        with temporary_cluster(SETTINGS, prefix="pybatch-scale-") as single:
            measure("single node", single.url(), load(single.url(), n, False))
        with temporary_citus_cluster(SETTINGS) as citus:
            measure("citus 1+2", citus.url(), load(citus.url(), n, True))


# -- the fleet search ----------------------------------------------------------------------
PERIOD = 15  # heartbeat_period, s
FLUSH_INTERVAL = 5.0  # flush_interval, s
LIMIT = 30.0  # Coder's inactive timeout: staleness must stay under it
GIVE_UP = 45.0  # a sample this stale ends the run early: clearly not sustained
WRITERS = 2
COPY_BEATS = "COPY pybatch.heartbeats (agent_id, beat_at) FROM STDIN"


def agent_id(i: int) -> uuid.UUID:
    """The id the server gives agent i when loading (md5('agent' || i)::uuid)."""
    return uuid.UUID(hashlib.md5(f"agent{i}".encode()).hexdigest())


def prepare_fleet(url: str, distribute: bool) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(AGENTS_DDL)
        if distribute:
            conn.execute("SELECT create_distributed_table('public.workspace_agents', 'id')")
        migrate.apply(conn)


def load_fleet(url: str, n: int) -> float:
    """N agents, none connected yet; staging, pending and the flush log emptied."""
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE public.workspace_agents, pybatch.heartbeats, pybatch.pending, pybatch.quarantine")
        conn.execute("DELETE FROM pybatch.flush_log")
        conn.execute(
            "UPDATE pybatch.settings SET flush_interval = make_interval(secs => %s),"
            " heartbeat_period = make_interval(secs => %s)",
            (FLUSH_INTERVAL, PERIOD),
        )
        conn.execute(
            "INSERT INTO public.workspace_agents (id, created_at)"
            " SELECT md5('agent' || i)::uuid, now() - interval '1 day' FROM generate_series(0, %s - 1) i",
            (n,),
        )
        conn.execute("VACUUM ANALYZE public.workspace_agents")
    return time.perf_counter() - started


@dataclass
class FleetRun:
    agents: int
    sustained: bool
    worst: float  # max sampled now() - min(last_connected_at), s
    health_worst: float | None  # pybatch.health.worst_staleness at the end, s
    flushes: int
    flush_max: float
    flush_mean: float
    failed_flushes: int
    writer_lag: float  # the longest a tick's COPY finished after its second, s
    load_s: float
    ended_early: bool


def run_fleet(url: str, n: int, warmup: float, measure_s: float) -> FleetRun:
    load_s = load_fleet(url, n)
    ids = [str(agent_id(i)) for i in range(n)]
    # Per second of the period and per writer: the agents that beat in it.
    slots = [[ids[i] for i in range(s, n, PERIOD)] for s in range(PERIOD)]
    parts = [[slot[w::WRITERS] for w in range(WRITERS)] for slot in slots]
    del ids
    stop = threading.Event()
    errors: list[BaseException] = []
    lag = [0.0] * WRITERS
    durations: list[float] = []
    failed = [0]
    start = time.time() + 1.0
    epoch = datetime.fromtimestamp(start, UTC)

    def writer(w: int) -> None:
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                tick = 0
                while not stop.is_set():
                    due = start + tick
                    pause = due - time.time()
                    if pause > 0 and stop.wait(pause):
                        return
                    stamp = (epoch + timedelta(seconds=tick)).isoformat()
                    rows = parts[tick % PERIOD][w]
                    if rows:
                        tail = f"\t{stamp}\n"
                        with conn.cursor() as cur, cur.copy(COPY_BEATS) as cp:
                            cp.write(tail.join(rows) + tail)
                    lag[w] = max(lag[w], time.time() - (due + 1.0))
                    tick += 1
        except BaseException as exc:  # surfaced by the main thread
            errors.append(exc)

    def flusher() -> None:
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                due = start + FLUSH_INTERVAL
                while not stop.is_set():
                    pause = due - time.time()
                    if pause > 0 and stop.wait(pause):
                        return
                    result = flush(conn)
                    durations.append(result.duration.total_seconds())
                    if result.error is not None:
                        failed[0] += 1
                    due = max(due + FLUSH_INTERVAL, time.time())  # overrun: the next starts at once
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
    threads.append(threading.Thread(target=flusher))
    for thread in threads:
        thread.start()
    worst = 0.0
    ended_early = False
    health_worst: float | None = None
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            time.sleep(max(0.0, start + warmup - time.time()))
            end = time.time() + measure_s
            while time.time() < end and not errors:
                row = conn.execute(
                    "SELECT extract(epoch FROM now() - min(last_connected_at))::float8,"
                    " count(*) FILTER (WHERE last_connected_at IS NULL) FROM public.workspace_agents"
                ).fetchone()
                assert row is not None
                sample = float("inf") if row[1] else float(row[0] or 0.0)
                worst = max(worst, sample)
                if worst > GIVE_UP:
                    ended_early = True
                    break
                time.sleep(1.0)
            h = conn.execute("SELECT extract(epoch FROM worst_staleness)::float8 FROM pybatch.health").fetchone()
            health_worst = None if h is None or h[0] is None else float(h[0])
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]
    sustained = worst < LIMIT and failed[0] == 0 and not ended_early
    return FleetRun(
        n,
        sustained,
        worst,
        health_worst,
        len(durations),
        max(durations, default=0.0),
        sum(durations) / len(durations) if durations else 0.0,
        failed[0],
        max(lag),
        load_s,
        ended_early,
    )


def show(label: str, run: FleetRun) -> None:
    worst = "never merged" if run.worst == float("inf") else f"{run.worst:5.1f} s"
    health = "-" if run.health_worst is None else f"{run.health_worst:.1f} s"
    print(
        f"{label:>12} {run.agents:>9,} agents | staleness max {worst}{' (stopped early)' if run.ended_early else ''}"
        f" | health.worst_staleness {health} | {run.flushes} flushes, max {run.flush_max:.2f} s,"
        f" mean {run.flush_mean:.2f} s, {run.failed_flushes} failed | writer lag {run.writer_lag:.2f} s"
        f" | load {run.load_s:.0f} s | {'SUSTAINED' if run.sustained else 'not sustained'}",
        flush=True,
    )


def search(
    label: str, url: str, first: int, largest: int, warmup: float, measure_s: float, budget: float
) -> tuple[int | None, int | None]:
    """Doubling from `first` while sustained, then one bisection; stops at `budget` seconds."""
    started = time.monotonic()
    passed: int | None = None
    failed: int | None = None
    n = first
    while n <= largest and time.monotonic() - started < budget:
        run = run_fleet(url, n, warmup, measure_s)
        show(label, run)
        if run.sustained:
            passed = n
            n *= 2
        else:
            failed = n
            break
    if passed is not None and failed is not None and time.monotonic() - started < budget:
        middle = round((passed * failed) ** 0.5, -3)
        if passed < middle < failed:
            run = run_fleet(url, int(middle), warmup, measure_s)
            show(label, run)
            if run.sustained:
                passed = int(middle)
            else:
                failed = int(middle)
    print(
        f"{label:>12}: largest sustained {passed if passed is None else f'{passed:,}'} agents,"
        f" first not sustained {failed if failed is None else f'{failed:,}'}",
        flush=True,
    )
    return passed, failed


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="*", type=int, help="agents per cost run (default 20000 100000)")
    parser.add_argument("--search", action="store_true", help="search the largest fleet with staleness < 30 s")
    parser.add_argument("--setups", default="single,citus", help="single, citus or both (default)")
    parser.add_argument("--start", type=int, default=100_000, help="first fleet size of the search")
    parser.add_argument("--max", type=int, default=1_600_000, help="largest fleet size tried")
    parser.add_argument("--warmup", type=float, default=PERIOD + FLUSH_INTERVAL + 2, help="seconds before sampling")
    parser.add_argument("--measure", type=float, default=PERIOD + 1, help="seconds of sampling")
    parser.add_argument("--budget", type=float, default=240, help="seconds of search per set-up")
    args = parser.parse_args(argv)
    if not args.search:
        measure_costs(args.sizes or [20_000, 100_000])
        return
    setups = args.setups.split(",")
    print(
        f"fleet search: {PERIOD} s period, {FLUSH_INTERVAL:.0f} s flush interval, {WRITERS} writers,"
        f" warm-up {args.warmup:.0f} s, {args.measure:.0f} s measured, limit {LIMIT:.0f} s",
        flush=True,
    )
    if "single" in setups:
        with temporary_cluster(SETTINGS, prefix="pybatch-scale-") as single:
            prepare_fleet(single.url(), False)
            search("single node", single.url(), args.start, args.max, args.warmup, args.measure, args.budget)
    if "citus" in setups:
        with temporary_citus_cluster(SETTINGS) as citus:
            prepare_fleet(citus.url(), True)
            search("citus 1+2", citus.url(), args.start, args.max, args.warmup, args.measure, args.budget)


if __name__ == "__main__":
    main(sys.argv[1:])
