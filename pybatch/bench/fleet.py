"""The simulated fleet: N agents, each heartbeating once per period, spread evenly,
driven by a few worker threads (as app replicas would be).

Agent i beats at offset i * period / N within every period. Worker w owns the
agents i with i % workers == w, so each worker sends at an even pace too. A worker
that falls behind sends at once and the lag is recorded: a fleet the write path
cannot keep up with shows as lag and staleness, not as a silently smaller load.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

log = logging.getLogger(__name__)

# The high 64 bits of every bench agent id ("bench" in ASCII): the bench finds,
# resets and deletes its own agents by this range and touches no other row.
BENCH_ID_PREFIX = 0x62656E6368000000
REPLICAS = (
    uuid.UUID("00000000-0000-4000-8000-000000000001"),
    uuid.UUID("00000000-0000-4000-8000-000000000002"),
    uuid.UUID("00000000-0000-4000-8000-000000000003"),
)

# beat(worker, agent_id, replica_id, at): one heartbeat, written the strategy's way.
BeatFunction = Callable[[int, uuid.UUID, uuid.UUID, datetime], None]


# Multiplying by an odd constant modulo 2**64 is a bijection: ids stay distinct and
# reproducible, yet look random, as Coder's (UUIDv4) do. Agents are inserted in index
# order, as a real table grows, so heap order is unrelated to key order: an index
# lookup per agent lands anywhere in the primary key, as on a real table.
_SCRAMBLE = 0x9E3779B97F4A7C15
_LOW_64 = 2**64 - 1


def agent_id(index: int) -> uuid.UUID:
    return uuid.UUID(int=(BENCH_ID_PREFIX << 64) | ((index * _SCRAMBLE) & _LOW_64))


def agent_ids(agents: int) -> list[uuid.UUID]:
    """The ids of a fleet of `agents`, in index (insertion) order."""
    return [agent_id(i) for i in range(agents)]


# Every id the bench could ever use, whatever the fleet size.
BENCH_ID_SPAN = (uuid.UUID(int=BENCH_ID_PREFIX << 64), uuid.UUID(int=(BENCH_ID_PREFIX << 64) | (2**64 - 1)))


@dataclass(frozen=True)
class Fleet:
    agents: int
    period_s: float  # wall-clock seconds between two beats of one agent (after compression)
    workers: int

    def offset_s(self, index: int) -> float:
        return index * self.period_s / self.agents

    def replica(self, index: int) -> uuid.UUID:
        return REPLICAS[index % len(REPLICAS)]


@dataclass
class WorkerLog:
    """Every beat one worker sent: when it began (monotonic), how long it took, how late it was."""

    began: array[float] = field(default_factory=lambda: array("d"))
    latency_s: array[float] = field(default_factory=lambda: array("d"))
    lag_s: array[float] = field(default_factory=lambda: array("d"))


@dataclass
class WindowLoad:
    """The beats that began inside one measuring window."""

    beats: int
    latencies_s: list[float]
    max_lag_s: float


class LoadGenerator:
    """Runs the fleet's schedule from start() until stop(), in worker threads, and keeps
    a record of every beat, so a window can be chosen after the fact (the bench aligns it
    with flushes that have already happened)."""

    def __init__(self, fleet: Fleet, beat: BeatFunction) -> None:
        self.fleet = fleet
        self._beat = beat
        self._stop = threading.Event()
        self._logs = [WorkerLog() for _ in range(fleet.workers)]
        self._threads = [
            threading.Thread(target=self._work, args=(w,), name=f"bench-fleet-{w}", daemon=True)
            for w in range(fleet.workers)
        ]
        self.started_at = 0.0
        self.error: BaseException | None = None

    def start(self) -> None:
        self.started_at = time.monotonic()
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        if self.error is not None:
            raise self.error

    def beats_sent(self) -> int:
        return sum(len(wlog.began) for wlog in self._logs)

    def window(self, start: float, end: float) -> WindowLoad:
        """The beats that began in [start, end) (after stop(), or approximate while running)."""
        latencies: list[float] = []
        max_lag = 0.0
        for wlog in self._logs:
            count = len(wlog.latency_s)
            for began, latency, lag in zip(wlog.began[:count], wlog.latency_s[:count], wlog.lag_s[:count], strict=True):
                if start <= began < end:
                    latencies.append(latency)
                    max_lag = max(max_lag, lag)
        return WindowLoad(len(latencies), latencies, max_lag)

    @property
    def failed(self) -> bool:
        return self.error is not None

    def _work(self, worker: int) -> None:
        fleet = self.fleet
        own = range(worker, fleet.agents, fleet.workers)
        ids = [agent_id(i) for i in own]
        replicas = [fleet.replica(i) for i in own]
        offsets = [fleet.offset_s(i) for i in own]
        wlog = self._logs[worker]
        period_start = self.started_at
        try:
            while not self._stop.is_set():
                for agent, replica, offset in zip(ids, replicas, offsets, strict=True):
                    due = period_start + offset
                    now = time.monotonic()
                    if due > now and self._stop.wait(due - now):
                        return
                    if self._stop.is_set():
                        return
                    began = time.monotonic()
                    self._beat(worker, agent, replica, datetime.now(UTC))
                    ended = time.monotonic()
                    # began last: a reader takes only entries whose latency is already there.
                    wlog.lag_s.append(max(0.0, began - due))
                    wlog.began.append(began)
                    wlog.latency_s.append(ended - began)
                period_start += fleet.period_s
        except BaseException as exc:  # stop the whole run: a failing write path is a result to report
            log.error("bench worker %s failed: %s", worker, exc, extra={"worker": worker})
            self.error = exc
            self._stop.set()
