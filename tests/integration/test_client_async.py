"""AsyncHeartbeatClient against a real database (each test drives its own event loop)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from pybatch import (
    AsyncHeartbeatClient,
    ClientClosed,
    ConfigError,
    InvalidAgentId,
    InvalidHeartbeat,
    InvalidTimestamp,
    UnknownAgent,
)
from tests.integration.test_client import REPLICA_A, REPLICA_B, agent_row, make_agents, staged


@pytest.fixture
def agents(conn: psycopg.Connection) -> list[uuid.UUID]:
    return make_agents(conn, 3)


def test_immediate_beat_and_disconnect(dsn: str, conn: psycopg.Connection, agents: list[uuid.UUID]) -> None:
    async def main() -> None:
        async with AsyncHeartbeatClient(dsn) as hb:
            await hb.beat(agents[0], replica_id=REPLICA_A)
            assert [r[:2] for r in staged(conn)] == [(agents[0], REPLICA_A)]  # committed on return
            assert await hb.disconnect(agents[1]) is True
            with pytest.raises(UnknownAgent):
                await hb.disconnect(uuid.uuid4())
            assert hb.stats.rows_written == 1 and hb.stats.beats_accepted == 1
        with pytest.raises(ClientClosed):
            await hb.beat(agents[0])

    asyncio.run(main())
    assert agent_row(conn, agents[1])[1] is not None


def test_immediate_with_pool_and_with_connection(dsn: str, conn: psycopg.Connection,
                                                 agents: list[uuid.UUID]) -> None:
    async def main() -> None:
        async with AsyncConnectionPool(dsn, min_size=1, max_size=2, open=False) as pool:
            async with AsyncHeartbeatClient(pool=pool) as hb:
                await hb.beat(agents[0])
            async with AsyncHeartbeatClient(pool=pool, mode="buffered", write_interval="1h") as buffered:
                await buffered.beat(agents[0])  # same agent: written again by the final COPY
            assert buffered.stats.rows_written == 1 and not pool.closed
        async with await psycopg.AsyncConnection.connect(dsn) as caller:
            hb = AsyncHeartbeatClient(connection=caller)
            async with caller.transaction(force_rollback=True):
                await hb.beat(agents[1])  # rolled back with the caller's transaction
            async with caller.transaction():
                await hb.beat(agents[2])
            await hb.close()

    asyncio.run(main())
    assert sorted(r[0] for r in staged(conn)) == sorted([agents[0], agents[0], agents[2]])


def test_constructor_checks(dsn: str) -> None:
    async def main() -> None:
        async with await psycopg.AsyncConnection.connect(dsn) as caller:
            with pytest.raises(ConfigError, match="single connection"):
                AsyncHeartbeatClient(mode="buffered", connection=caller)
        with ConnectionPool(dsn, open=False) as sync_pool, pytest.raises(ConfigError, match="HeartbeatClient"):
            AsyncHeartbeatClient(pool=sync_pool)  # type: ignore[arg-type]

    asyncio.run(main())


def test_buffered_keeps_latest_and_writes_on_close(dsn: str, conn: psycopg.Connection,
                                                   agents: list[uuid.UUID]) -> None:
    a, b, _ = agents
    t0 = datetime.now(UTC) - timedelta(minutes=1)

    async def main() -> None:
        hb = AsyncHeartbeatClient(dsn, mode="buffered", write_interval="1h")
        await hb.beat(a, at=t0, replica_id=REPLICA_B)
        await hb.beat(a, at=t0 + timedelta(seconds=1), replica_id=REPLICA_A)
        await hb.beat(a, at=t0 + timedelta(seconds=1), replica_id=None)  # tie: NULL loses
        await hb.beat(b)
        await asyncio.sleep(0.2)
        assert staged(conn) == [] and hb.stats.buffer_size == 2
        await hb.close()
        assert hb.stats.rows_written == 2
        with pytest.raises(ClientClosed):
            await hb.flush_buffer()

    asyncio.run(main())
    rows = {r[0]: r for r in staged(conn)}
    assert rows[a] == (a, REPLICA_A, t0 + timedelta(seconds=1)) and rows[b][1] is None


def test_buffered_writes_on_interval_and_at_max_batch(dsn: str, conn: psycopg.Connection) -> None:
    many = make_agents(conn, 5)

    async def wait_for_rows(n: int) -> None:
        for _ in range(200):
            if len(staged(conn)) >= n:
                return
            await asyncio.sleep(0.05)

    async def main() -> None:
        async with AsyncHeartbeatClient(dsn, mode="buffered", write_interval="1h", max_batch=4) as hb:
            for agent in many[:3]:
                await hb.beat(agent)
            await asyncio.sleep(0.3)
            assert staged(conn) == []
            await hb.beat(many[3])  # the 4th waiting agent: write now
            await wait_for_rows(4)
            assert len(staged(conn)) == 4
        async with AsyncHeartbeatClient(dsn, mode="buffered", write_interval="100ms") as hb:
            await hb.beat(many[4])
            await wait_for_rows(5)
            assert len(staged(conn)) == 5

    asyncio.run(main())


@pytest.mark.parametrize("mode", ["immediate", "buffered"])
def test_bad_input_never_corrupts_the_buffer(dsn: str, conn: psycopg.Connection, agents: list[uuid.UUID],
                                             mode: str) -> None:
    a, b, c = agents
    t0 = datetime.now(UTC) - timedelta(minutes=1)

    async def main() -> None:
        async with AsyncHeartbeatClient(dsn, mode=mode, write_interval="1h") as hb:
            await hb.beat(a, at=t0)
            with pytest.raises(InvalidAgentId, match="None"):
                await hb.beat(None)
            with pytest.raises(InvalidAgentId, match="'zz'"):
                await hb.beat("zz")
            with pytest.raises(InvalidHeartbeat, match="'r'"):
                await hb.beat(b, replica_id="r")
            with pytest.raises(InvalidTimestamp, match="naive"):
                await hb.beat(b, at=datetime(2025, 1, 1))
            with pytest.raises(InvalidTimestamp, match="future_tolerance"):
                await hb.beat(a, at=datetime.now(UTC) + timedelta(hours=1))
            with pytest.raises(InvalidTimestamp, match="naive"):
                await hb.disconnect(b, at=datetime(2025, 1, 1))
            await hb.beat(c, at=t0)
            assert hb.stats.beats_accepted == 2

    asyncio.run(main())
    assert sorted(staged(conn)) == sorted([(a, None, t0), (c, None, t0)])


def test_many_tasks_beat_at_once(dsn: str, conn: psycopg.Connection) -> None:
    many = make_agents(conn, 100)
    base = datetime(2025, 1, 1, tzinfo=UTC)

    async def main() -> None:
        async with AsyncHeartbeatClient(dsn, mode="buffered", write_interval="20ms", max_batch=30) as hb:
            async def worker(n: int) -> None:
                for r in range(20):
                    for agent in many[n::5]:
                        await hb.beat(agent, at=base + timedelta(seconds=r))
                    await asyncio.sleep(0)

            await asyncio.gather(*(worker(n) for n in range(5)))
        assert hb.stats.beats_accepted == 2000 and hb.stats.buffer_size == 0

    asyncio.run(main())
    latest = conn.execute("SELECT agent_id, max(beat_at) FROM pybatch.heartbeats GROUP BY agent_id").fetchall()
    assert dict(latest) == dict.fromkeys(many, base + timedelta(seconds=19))
