"""A buffered client inside an app: many agents beat, the client batches them in memory
and COPYs the latest beat per agent into staging once per write interval.

    PYBATCH_DSN=postgresql://user@host/db python examples/buffered_app.py

An app replica keeps one HeartbeatClient for its whole life. beat() costs microseconds and
never blocks on the database; disconnect() writes at once. Leaving the `with` block writes
what is still buffered.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid

import psycopg

from pybatch import HeartbeatClient
from pybatch.flush import flush

AGENTS = [uuid.UUID(f"e0000000-0000-4000-8000-0000000001{n:02d}") for n in range(20)]
REPLICA = uuid.UUID("e0000000-0000-4000-8000-0000000001ff")


def agent_connection(client: HeartbeatClient, agent: uuid.UUID, beats: int, stop: threading.Event) -> None:
    """What an app does per connected agent: beat on every keep-alive it receives."""
    for _ in range(beats):
        if stop.is_set():
            return
        client.beat(agent, replica_id=REPLICA)
        time.sleep(0.05)


def main() -> int:
    dsn = os.environ.get("PYBATCH_DSN")
    if not dsn:
        print("set PYBATCH_DSN to the database pybatch was migrated into", file=sys.stderr)
        return 2
    with psycopg.connect(dsn, autocommit=True) as conn:
        # The agents exist before they connect (Coder creates them when it builds a workspace).
        conn.execute(
            "INSERT INTO public.workspace_agents (id) SELECT unnest(%s::uuid[]) ON CONFLICT (id) DO NOTHING", (AGENTS,)
        )

    stop = threading.Event()
    with HeartbeatClient(dsn, mode="buffered", write_interval="200ms", max_batch=5000) as client:
        threads = [threading.Thread(target=agent_connection, args=(client, agent, 10, stop)) for agent in AGENTS]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        # The last agent goes away: a disconnect bypasses staging and is written at once.
        client.disconnect(AGENTS[-1])
        stats = client.stats
    # Leaving the block wrote what was still buffered.
    print(
        f"beats accepted {stats.beats_accepted}, rows written so far {stats.rows_written}, "
        f"write failures {stats.write_failures}"
    )

    with psycopg.connect(dsn, autocommit=True) as conn:
        result = flush(conn)  # normally the pg_cron job or `pybatch scheduler` does this
        print(f"flush: rows_staged={result.rows_staged} agents_updated={result.agents_updated}")
        counts = conn.execute(
            "SELECT status, count(*) FROM pybatch.agent_status WHERE agent_id = ANY(%s) "
            "GROUP BY status ORDER BY status",
            (AGENTS,),
        ).fetchall()
    for status, count in counts:
        print(f"{status}: {count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
