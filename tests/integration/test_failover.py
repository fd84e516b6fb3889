"""A failover (kill -9 of the primary, then promote) and a switchover (clean stop, then promote)
under load, with buffered writers and `pybatch scheduler` on a multi-host DSN: no acknowledged
beat is lost, and no agent that kept beating goes past the inactive timeout (docs/ha.md).

Times are scaled down (heartbeat 2 s, flush 1 s, write 200 ms) with an inactive timeout of 12 s,
which leaves a failover about the slack Coder's defaults leave it (30 s - 15 s - 1 s - 5 s = 9 s)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pybatch.local import LocalCluster
from tests.failover_run import run_failover
from tests.ha_fixtures import primary, standby_of

__all__ = ["primary"]  # the fixture, imported for this module's tests

pytestmark = pytest.mark.slow


@pytest.fixture
def standby(primary: LocalCluster) -> Iterator[LocalCluster]:
    with standby_of(primary) as node:
        yield node


@pytest.mark.parametrize("kind", ["failover", "switchover"])
def test_no_acknowledged_beat_lost_and_no_agent_past_the_timeout(
    primary: LocalCluster, standby: LocalCluster, kind: str
) -> None:
    figures = run_failover(primary, standby, kind=kind, agents=300)
    print(figures.as_dict())
    assert figures.acknowledged_beats_lost == 0, figures
    assert figures.agents_over_timeout_max == 0, figures
    assert figures.rows_rewritten > 0, figures  # the clients wrote their recent beats again
    assert figures.first_flush_after_promotion_s is not None, figures
