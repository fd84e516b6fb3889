"""Quick start: create an agent, send a heartbeat, flush, read the row back.

    PYBATCH_DSN=postgresql://user@host/db python examples/quickstart.py

The database must be migrated first (`pybatch migrate`). Running the example twice is fine:
it updates the same agent.
"""

from __future__ import annotations

import os
import sys
import uuid

import psycopg

from pybatch import HeartbeatClient
from pybatch.flush import flush

AGENT = uuid.UUID("e0000000-0000-4000-8000-000000000001")  # a fixed id: reruns update the same row
REPLICA = uuid.UUID("e0000000-0000-4000-8000-0000000000ff")  # the app replica the agent talks to


def main() -> int:
    dsn = os.environ.get("PYBATCH_DSN")
    if not dsn:
        print("set PYBATCH_DSN to the database pybatch was migrated into", file=sys.stderr)
        return 2
    with psycopg.connect(dsn, autocommit=True) as conn:
        # 1. The agent must exist in workspace_agents: heartbeats for unknown agents are dropped
        #    at flush (and counted in unknown_heartbeats). In Coder, the control plane creates
        #    this row when it builds the workspace; here we create it ourselves.
        conn.execute("INSERT INTO public.workspace_agents (id) VALUES (%s) ON CONFLICT (id) DO NOTHING", (AGENT,))

        # 2. A heartbeat: one INSERT into the staging table pybatch.heartbeats.
        with HeartbeatClient(dsn, mode="immediate") as client:
            client.beat(AGENT, replica_id=REPLICA)

        # 3. A flush merges staging into workspace_agents. In production a pg_cron job or
        #    `pybatch scheduler` runs it every few seconds; here we call it once.
        result = flush(conn)
        print(f"flush: rows_staged={result.rows_staged} agents_updated={result.agents_updated}")

        # 4. Read the row back, with its status by Coder's rules.
        row = conn.execute(
            "SELECT a.first_connected_at, a.last_connected_at, a.last_connected_replica_id, s.status "
            "FROM public.workspace_agents a JOIN pybatch.agent_status s ON s.agent_id = a.id WHERE a.id = %s",
            (AGENT,),
        ).fetchone()
    assert row is not None
    first, last, replica, status = row
    print(
        f"agent {AGENT}: {status}, first_connected_at={first:%H:%M:%S}, last_connected_at={last:%H:%M:%S}, "
        f"replica={replica}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
