"""The buffered client writes its recent beats again after a crash restart emptied staging
(UNLOGGED), with its own connection or a caller's pool, even when it has nothing new to write."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from pybatch import HeartbeatClient
from pybatch.local import LocalCluster
from tests.ha_fixtures import pg_ctl, wait_until
from tests.helpers import last_connected, make_agents, stage


def staged(dsn: str, agents: list[uuid.UUID]) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pybatch.heartbeats WHERE agent_id = ANY(%s)", (agents,)).fetchone()
    return int(row[0]) if row else 0


def crash_restart(cluster: LocalCluster) -> None:
    """An immediate shutdown and a start: crash recovery resets every UNLOGGED table."""
    pg_ctl(cluster, "stop", "-m", "immediate", "-w", "-t", "60")
    cluster.start()


@pytest.mark.parametrize("through", ["dsn", "pool"])
def test_beats_lost_with_staging_are_written_again(own_cluster: LocalCluster, through: str) -> None:
    dsn = own_cluster.url()
    with psycopg.connect(dsn, autocommit=True) as conn:
        agents = make_agents(conn, 20)
        # A beat staged by someone else, who will not write it again: the crash must take it.
        marker = make_agents(conn, 1)
        stage(conn, marker, datetime.now(UTC))
    at = datetime.now(UTC) - timedelta(seconds=1)
    pool = (
        ConnectionPool(dsn, min_size=1, max_size=2, kwargs={"autocommit": True}, open=True)
        if through == "pool"
        else None
    )
    try:
        client = HeartbeatClient(
            None if pool is not None else dsn,
            pool=pool,
            mode="buffered",
            write_interval="100ms",
            max_backoff="500ms",
            connect_timeout="2s",
        )
        with client:
            for agent in agents:
                client.beat(agent, at=at)
            client.flush_buffer()
            assert staged(dsn, agents) == 20 and staged(dsn, marker) == 1
            crash_restart(own_cluster)
            # No new beat: the idle writer notices the new server by itself and writes them again.
            wait_until(lambda: staged(dsn, agents) == 20, 30, "the client to write its recent beats again")
            assert staged(dsn, marker) == 0  # the crash emptied staging, before any flush merged it
            assert client.stats.rows_rewritten == 20 and client.stats.rows_written == 20
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CALL pybatch.flush_in_passes(NULL, make_interval(secs => 5), NULL)")
            assert set(last_connected(conn, agents).values()) == {at}
    finally:
        if pool is not None:
            pool.close()
