"""The asyncio client: the same calls as HeartbeatClient, awaited.

PYBATCH_DSN=postgresql://user@host/db python examples/async_client.py
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid

import psycopg

from pybatch import AsyncHeartbeatClient

AGENTS = [uuid.UUID(f"e0000000-0000-4000-8000-0000000002{n:02d}") for n in range(5)]
REPLICA = uuid.UUID("e0000000-0000-4000-8000-0000000002ff")


async def main() -> int:
    dsn = os.environ.get("PYBATCH_DSN")
    if not dsn:
        print("set PYBATCH_DSN to the database pybatch was migrated into", file=sys.stderr)
        return 2
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        # The agents exist before they connect (Coder creates them when it builds a workspace).
        await conn.execute(
            "INSERT INTO public.workspace_agents (id) SELECT unnest(%s::uuid[]) ON CONFLICT (id) DO NOTHING", (AGENTS,)
        )

        async with AsyncHeartbeatClient(dsn, mode="buffered", write_interval="200ms") as client:
            await asyncio.gather(*(client.beat(agent, replica_id=REPLICA) for agent in AGENTS))
            await client.disconnect(AGENTS[0])  # direct and immediate
        # Leaving the block wrote the buffered beats into staging.

        # Normally the pg_cron job or `pybatch scheduler` flushes; here we flush once. The
        # procedure commits between passes, so it runs outside a transaction (autocommit).
        await conn.execute("CALL pybatch.flush_in_passes()")
        cur = await conn.execute("SELECT rows_staged, agents_updated, error FROM pybatch.flush_history LIMIT 1")
        print("flush: rows_staged={} agents_updated={} error={}".format(*(await cur.fetchone() or ())))
        cur = await conn.execute(
            "SELECT agent_id, status FROM pybatch.agent_status WHERE agent_id = ANY(%s) ORDER BY agent_id", (AGENTS,)
        )
        for agent, status in await cur.fetchall():
            print(f"{agent} {status}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
