# WARNING: generated from tests/integration/test_client_outage_async.py by tools/async_to_sync.py. DO NOT EDIT:
# change tests/integration/test_client_outage_async.py, then run `python tools/async_to_sync.py`.
"""The clients through a real database outage: the server is stopped mid-run and restarted.

Buffered mode must keep every agent's latest heartbeat, never raise into beat(), log once
per outage and once on recovery, and deliver when the server is back. Immediate mode must
raise a typed pybatch error while the server is down and work again afterwards."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypedDict

import psycopg
import pytest

from pybatch import DatabaseUnavailable, HeartbeatClient
from pybatch.flush import flush
from pybatch.local import LocalCluster


class Options(TypedDict):
    write_interval: str
    max_backoff: str
    connect_timeout: str


OPTIONS: Options = {"write_interval": "100ms", "max_backoff": "500ms", "connect_timeout": "2s"}


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def make_agents(url: str, n: int) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(n)]
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("INSERT INTO public.workspace_agents (id) SELECT unnest(%s::uuid[])", (ids,))
    return ids


def flushed_last_connected(url: str, agents: list[uuid.UUID]) -> dict[uuid.UUID, datetime]:
    with psycopg.connect(url, autocommit=True) as c:
        result = flush(c)
        assert result.ok, result
        rows = c.execute(
            "SELECT id, last_connected_at FROM public.workspace_agents WHERE id = ANY(%s)", (agents,)
        ).fetchall()
    return dict(rows)


def outage_records(caplog: pytest.LogCaptureFixture) -> tuple[int, int]:
    messages = [r.getMessage() for r in caplog.records if r.name == "pybatch._core"]
    return (sum("writes failing" in m for m in messages), sum("writes recovered" in m for m in messages))


def test_clients_survive_a_server_restart(own_cluster: LocalCluster, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="pybatch")
    url = own_cluster.url()
    agents = make_agents(url, 20)
    latest: dict[uuid.UUID, datetime] = {}

    def beat_all(hb: HeartbeatClient) -> None:
        for agent in agents:
            at = datetime.now(UTC)
            hb.beat(agent, at=at)  # must never raise in buffered mode
            latest[agent] = at

    with (
        HeartbeatClient(url, mode="buffered", **OPTIONS) as buffered,
        HeartbeatClient(url, **OPTIONS) as immediate,
    ):
        beat_all(buffered)
        immediate.beat(agents[0])
        wait_until(lambda: buffered.stats.rows_written == len(agents))

        own_cluster.stop()
        for _ in range(10):
            beat_all(buffered)
            time.sleep(0.1)
        wait_until(lambda: buffered.stats.write_failures >= 3)
        failures = buffered.stats.write_failures
        beat_all(buffered)
        wait_until(lambda: buffered.stats.write_failures > failures)  # still retrying, still accepting
        assert buffered.stats.buffer_size == len(agents)  # one row per agent, however many beats
        assert buffered.stats.failing_since is not None

        with pytest.raises(DatabaseUnavailable, match=str(agents[1])) as info:
            immediate.beat(agents[1])
        assert not isinstance(info.value, psycopg.Error)
        with pytest.raises(DatabaseUnavailable):
            immediate.disconnect(agents[1])
        assert immediate.stats.write_failures == 1
        assert outage_records(caplog) == (2, 0)  # once per client, not once per beat or retry

        own_cluster.start()
        wait_until(lambda: buffered.stats.buffer_size == 0)
        assert buffered.stats.failing_since is None
        assert buffered.stats.rows_written >= 2 * len(agents)
        immediate.beat(agents[1])  # the stale connection is replaced transparently
        assert immediate.stats.rows_written == 2
        beat_all(buffered)
    # leaving the block did the final write of the last round
    assert outage_records(caplog) == (2, 2)
    assert flushed_last_connected(url, agents) == latest
