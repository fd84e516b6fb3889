"""The simulated fleet: even spread, worker partition, the record of every beat."""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections import Counter
from datetime import datetime

import pytest

from pybatch.bench.fleet import BENCH_ID_SPAN, Fleet, LoadGenerator, agent_id, agent_ids


def test_agent_ids_are_distinct_and_inside_the_bench_span() -> None:
    ids = agent_ids(1000)
    assert ids == [agent_id(i) for i in range(1000)]
    assert len(set(ids)) == 1000
    lo, hi = BENCH_ID_SPAN
    assert all(lo <= i <= hi for i in ids)
    assert not lo <= uuid.UUID(int=0) <= hi


def test_agent_ids_are_not_in_insertion_order() -> None:
    # Key order unrelated to heap order, as in a table grown over time.
    ids = agent_ids(1000)
    rising = sum(a < b for a, b in itertools.pairwise(ids))
    assert 300 < rising < 700


def test_beats_are_spread_evenly_over_the_period() -> None:
    fleet = Fleet(agents=10, period_s=5.0, workers=3)
    offsets = [fleet.offset_s(i) for i in range(10)]
    assert offsets == pytest.approx([i * 0.5 for i in range(10)])
    assert {fleet.replica(i) for i in range(10)} == {fleet.replica(0), fleet.replica(1), fleet.replica(2)}


def test_every_agent_beats_once_per_period_across_workers() -> None:
    seen: Counter[uuid.UUID] = Counter()
    workers_of: dict[uuid.UUID, set[int]] = {}
    lock = threading.Lock()

    def beat(worker: int, agent: uuid.UUID, replica: uuid.UUID, at: datetime) -> None:
        with lock:
            seen[agent] += 1
            workers_of.setdefault(agent, set()).add(worker)

    period = 0.4
    load = LoadGenerator(Fleet(agents=40, period_s=period, workers=4), beat)
    load.start()
    time.sleep(period * 2.5)
    load.stop()
    assert set(seen) == {agent_id(i) for i in range(40)}
    # 2.5 periods: every agent beat 2 or 3 times, each always from the same worker.
    assert all(2 <= count <= 3 for count in seen.values()), seen
    assert all(len(workers) == 1 for workers in workers_of.values())
    assert load.beats_sent() == sum(seen.values())


def test_window_counts_only_beats_that_began_inside_it() -> None:
    load = LoadGenerator(Fleet(agents=20, period_s=0.2, workers=2), lambda w, a, r, t: None)
    load.start()
    time.sleep(0.1)
    start = time.monotonic()
    time.sleep(0.4)
    end = time.monotonic()
    time.sleep(0.1)
    load.stop()
    window = load.window(start, end)
    # 0.4 s of a fleet sending 100 beats/s.
    assert 30 <= window.beats <= 50
    assert window.beats < load.beats_sent()
    assert len(window.latencies_s) == window.beats


def test_a_slow_write_path_shows_as_lag() -> None:
    def slow(worker: int, agent: uuid.UUID, replica: uuid.UUID, at: datetime) -> None:
        time.sleep(0.02)  # 50 beats/s at most, against 200 offered

    load = LoadGenerator(Fleet(agents=40, period_s=0.2, workers=1), slow)
    load.start()
    time.sleep(0.5)
    load.stop()
    window = load.window(load.started_at, time.monotonic())
    assert window.max_lag_s > 0.2
    assert min(window.latencies_s) >= 0.02


def test_a_failing_beat_stops_the_run_and_is_raised() -> None:
    def failing(worker: int, agent: uuid.UUID, replica: uuid.UUID, at: datetime) -> None:
        raise RuntimeError(f"write of {agent} failed")

    load = LoadGenerator(Fleet(agents=10, period_s=0.1, workers=2), failing)
    load.start()
    deadline = time.monotonic() + 5
    while not load.failed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert load.failed
    with pytest.raises(RuntimeError, match="failed"):
        load.stop()
