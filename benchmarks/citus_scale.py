"""Citus vs one node, in one run: writer cost and flush cost per shard.

Starts a single-node cluster and a Citus cluster (coordinator + 2 workers on this machine),
loads N agents (workspace_agents distributed by id on Citus), then for each:
  - writer path: COPY of all N heartbeats in batches of 500 and single-row INSERTs (µs per beat,
    client wall time: the coordinator routes each row to its shard);
  - flush: ROUNDS rounds of "every agent beats once, then CALL pybatch.flush_in_passes()";
    the figures of the last round (steady state), and on Citus each shard group's own time
    from pybatch.flush_log_shards.
Usage: .venv/bin/python benchmarks/citus_scale.py [AGENTS ...]   (default 20000 100000)
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable

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
    migrate.apply(url)
    return ids


def copy_beats(conn: psycopg.Connection, ids: list[uuid.UUID]) -> None:
    for start in range(0, len(ids), 500):
        with conn.cursor() as cur, cur.copy("COPY pybatch.heartbeats (agent_id) FROM STDIN") as cp:
            for agent in ids[start:start + 500]:
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
            " avg(rows_staged) FROM pybatch.flush_log_shards WHERE flush_id = %s", (result.flush_id,)).fetchone()
    print(f"{label:>12} {n:>8,} agents | COPY {copy_s / n * 1e6:6.1f} us/beat | INSERT {insert_s / 2000 * 1e6:6.0f}"
          f" us/beat | flush {result.duration.total_seconds():6.2f} s ({result.passes} passes,"
          f" HOT {result.hot_updates}/{result.agents_updated})", end="")
    if shards and shards[0]:
        print(f" | {shards[0]} shard groups: max {shards[1]:.2f} s, mean {shards[2]:.2f} s,"
              f" {shards[3]:,.0f} agents each")
    else:
        print()


def main(sizes: list[int]) -> None:
    for n in sizes:
        with temporary_cluster(SETTINGS, prefix="pybatch-scale-") as single:
            measure("single node", single.url(), load(single.url(), n, False))
        with temporary_citus_cluster(SETTINGS) as citus:
            measure("citus 1+2", citus.url(), load(citus.url(), n, True))


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [20_000, 100_000])
