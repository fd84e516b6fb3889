"""The ways of writing heartbeats that the bench compares, and the flushers.

- direct:      one UPDATE of workspace_agents per heartbeat (Coder's UpdateWorkspaceAgentConnectionByID).
- app_batch:   the reference design: batch in the app (at most 500, or every 5 s),
               deduplicate per agent, one UPDATE ... FROM unnest(...) with a newer-wins guard.
- coder_batch: Coder's own batcher: the same batching, its UPDATE (every connection column,
               sentinels and NULLIF, guard `wa.updated_at <= a.updated_at`).
- staged:      pybatch HeartbeatClient in immediate mode (one INSERT into staging), plus the flush.
- buffered:    pybatch HeartbeatClient in buffered mode (COPY into staging), plus the flush.

The flush is pybatch.flush.flush(conn) on an idle connection: CALL pybatch.flush_in_passes().

Every write to workspace_agents other than one per beat is recorded as a TimedWrite,
so the report can count statements and time them.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import ClassVar

import psycopg

from pybatch import db, resources
from pybatch.client import HeartbeatClient
from pybatch.errors import FlushFailed
from pybatch.flush import flush

log = logging.getLogger(__name__)

STRATEGY_NAMES = ("direct", "app_batch", "coder_batch", "staged", "buffered")
# Coder's batcher sends NULL as these zero values and turns them back with NULLIF.
ZERO_TIME = datetime(1, 1, 1, tzinfo=UTC)
NIL_UUID = uuid.UUID(int=0)
FLUSH_LOG_POLL_S = 0.05


@dataclass(frozen=True)
class Timing:
    """Intervals in wall-clock seconds, already divided by the compression factor."""

    flush_interval_s: float
    app_batch_wait_s: float
    write_interval_s: float
    app_batch_size: int = 500
    buffered_max_batch: int = 5000


@dataclass(frozen=True)
class TimedWrite:
    """One statement against workspace_agents that is not a single beat: a batch or a flush."""

    started: float  # time.monotonic()
    duration_s: float
    rows: int
    log_updates: int = 0  # a flush watched in pybatch.flush_log: its row's updates (passes + its end)


def publish_stats(conn: psycopg.Connection) -> None:
    """Make this backend publish its pending table statistics before it answers.

    PostgreSQL 15 publishes them when a backend goes idle, at most once a second, else
    up to 10 s later: without this, pg_stat_user_tables would trail the window's ends.
    pg_stat_force_next_flush() (15+) lifts that limit for the next idle moment, and the
    backend reports before it sends ReadyForQuery, so the stats are public on return."""
    if conn.info.server_version >= 150000:
        with db.translated("cannot request a statistics report"):
            conn.execute("SELECT pg_catalog.pg_stat_force_next_flush()")


class Strategy(abc.ABC):
    name: ClassVar[str]
    uses_flush: ClassVar[bool] = False
    # Statements against workspace_agents issued by each beat() itself.
    target_statements_per_beat: ClassVar[int] = 0

    def __init__(self) -> None:
        self.writes: list[TimedWrite] = []
        self.error: BaseException | None = None

    def publish_stats(self, timeout_s: float) -> None:  # noqa: B027 - a no-op unless a strategy needs it
        """Make every backend that wrote workspace_agents publish its table statistics now.
        Strategies whose writers publish after every write (batches, flushes) need nothing."""

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        """While inside, no write of this strategy's own writer thread is under way, so a
        boundary read inside sees each write either whole (WAL and statistics) or not at all.
        Beats written by the fleet's workers themselves (direct) are not held."""
        yield

    @abc.abstractmethod
    def beat(self, worker: int, agent: uuid.UUID, replica: uuid.UUID, at: datetime) -> None:
        """Write one heartbeat (called from fleet worker `worker`)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Write what is pending and close every connection (backends then report their statistics)."""


class Direct(Strategy):
    name = "direct"
    target_statements_per_beat = 1

    def __init__(self, dsn: str, workers: int, timing: Timing) -> None:
        super().__init__()
        self._query = resources.read_sql("bench/direct_update.sql")
        self._conns = [db.connect(dsn) for _ in range(workers)]
        self._publish: list[threading.Event] | None = None

    def beat(self, worker: int, agent: uuid.UUID, replica: uuid.UUID, at: datetime) -> None:
        conn = self._conns[worker]
        conn.execute(self._query, {"at": at, "replica_id": replica, "agent_id": agent})
        requested = self._publish
        if requested is not None and not requested[worker].is_set():
            publish_stats(conn)  # once per window end, not per beat: it would cost a statement each
            requested[worker].set()

    def publish_stats(self, timeout_s: float) -> None:
        """Each worker publishes after its next beat; wait for all of them."""
        requested = [threading.Event() for _ in self._conns]
        self._publish = requested
        deadline = time.monotonic() + timeout_s
        for event in requested:
            if not event.wait(max(0.0, deadline - time.monotonic())):
                log.warning("a direct worker did not publish its statistics within %.1fs", timeout_s)
                break
        self._publish = None

    def close(self) -> None:
        for conn in self._conns:
            conn.close()


class AppBatch(Strategy):
    """The app-side batcher: beat() only records the latest beat per agent; a writer
    thread sends a batch when it holds app_batch_size agents or is app_batch_wait_s old."""

    name = "app_batch"
    QUERY: ClassVar[str] = "bench/app_batch_update.sql"

    def __init__(self, dsn: str, workers: int, timing: Timing) -> None:
        super().__init__()
        self._timing = timing
        self._query = resources.read_sql(self.QUERY)
        self._conn = db.connect(dsn)
        self._cond = threading.Condition()
        self._pending: dict[uuid.UUID, tuple[datetime, uuid.UUID]] = {}
        self._oldest = 0.0
        self._closing = False
        self._writing = threading.Lock()  # held by each batch write, and by quiet()
        self._thread = threading.Thread(target=self._run, name="bench-app-batch", daemon=True)
        self._thread.start()

    def beat(self, worker: int, agent: uuid.UUID, replica: uuid.UUID, at: datetime) -> None:
        if self.error is not None:
            raise self.error
        with self._cond:
            started_batch = not self._pending
            if started_batch:
                self._oldest = time.monotonic()
            known = self._pending.get(agent)
            if known is None or known[0] <= at:  # deduplicate: the newest beat per agent wins
                self._pending[agent] = (at, replica)
            # Wake the writer to start the batch's clock, or to send a full batch.
            if started_batch or len(self._pending) >= self._timing.app_batch_size:
                self._cond.notify()

    def _take(self) -> dict[uuid.UUID, tuple[datetime, uuid.UUID]] | None:
        with self._cond:
            while True:
                if self._pending and (
                    self._closing
                    or len(self._pending) >= self._timing.app_batch_size
                    or time.monotonic() >= self._oldest + self._timing.app_batch_wait_s
                ):
                    batch, self._pending = self._pending, {}
                    return batch
                if self._closing:
                    return None
                timeout = self._oldest + self._timing.app_batch_wait_s - time.monotonic() if self._pending else None
                self._cond.wait(timeout)

    def _run(self) -> None:
        try:
            while (batch := self._take()) is not None:
                items = list(batch.items())
                size = self._timing.app_batch_size
                for first in range(0, len(items), size):
                    self._write(items[first : first + size])
        except BaseException as exc:
            log.error("app batch writer failed: %s", exc)
            self.error = exc

    def _params(self, items: list[tuple[uuid.UUID, tuple[datetime, uuid.UUID]]]) -> dict[str, object]:
        return {
            "ids": [agent for agent, _ in items],
            "ats": [at for _, (at, _) in items],
            "replica_ids": [replica for _, (_, replica) in items],
        }

    def _write(self, items: list[tuple[uuid.UUID, tuple[datetime, uuid.UUID]]]) -> None:
        params = self._params(items)
        with self._writing:
            started = time.monotonic()
            with db.translated("app batch UPDATE failed"):
                cur = self._conn.execute(self._query, params)
            ended = time.monotonic()
            publish_stats(self._conn)
            self.writes.append(TimedWrite(started, ended - started, cur.rowcount))

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        with self._writing:
            yield

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()
        self._conn.close()
        if self.error is not None:
            raise self.error


class CoderBatch(AppBatch):
    """Coder's batcher: AppBatch's batching (500 agents or 5 s, latest beat per agent), with
    Coder's UPDATE. The app remembers each agent's first connection, as Coder's does, and
    sends every connection column, NULLs as zero values."""

    name = "coder_batch"
    QUERY: ClassVar[str] = "bench/coder_batch_update.sql"

    def __init__(self, dsn: str, workers: int, timing: Timing) -> None:
        self._first_seen: dict[uuid.UUID, datetime] = {}
        super().__init__(dsn, workers, timing)

    def _params(self, items: list[tuple[uuid.UUID, tuple[datetime, uuid.UUID]]]) -> dict[str, object]:
        return coder_batch_params(items, self._first_seen)


def coder_batch_params(
    items: Sequence[tuple[uuid.UUID, tuple[datetime, uuid.UUID | None]]],
    first_seen: dict[uuid.UUID, datetime],
) -> dict[str, object]:
    """The arrays Coder's batch UPDATE takes: NULLs as zero values, first connection remembered."""
    for agent, (at, _) in items:
        if agent not in first_seen or at < first_seen[agent]:
            first_seen[agent] = at
    return {
        "ids": [agent for agent, _ in items],
        "first_ats": [first_seen[agent] for agent, _ in items],
        "last_ats": [at for _, (at, _) in items],
        "replica_ids": [replica or NIL_UUID for _, (_, replica) in items],
        "disconnected_ats": [ZERO_TIME for _ in items],
        "updated_ats": [at for _, (at, _) in items],
    }


class Staged(Strategy):
    """pybatch immediate mode: every beat() is one INSERT into the UNLOGGED staging table.
    One client per fleet worker, as each app replica would have its own."""

    name = "staged"
    uses_flush = True

    def __init__(self, dsn: str, workers: int, timing: Timing) -> None:
        super().__init__()
        self._clients = [HeartbeatClient(dsn, mode="immediate") for _ in range(workers)]

    def beat(self, worker: int, agent: uuid.UUID, replica: uuid.UUID, at: datetime) -> None:
        self._clients[worker].beat(agent, replica_id=replica, at=at)

    def close(self) -> None:
        for client in self._clients:
            client.close()


class Buffered(Strategy):
    """pybatch buffered mode: beat() records in memory; the client's writer COPYs the
    latest beat per agent every write_interval. One client shared by the fleet workers
    (it is thread-safe), as one app replica would share it."""

    name = "buffered"
    uses_flush = True

    def __init__(self, dsn: str, workers: int, timing: Timing) -> None:
        super().__init__()
        self._client = HeartbeatClient(
            dsn,
            mode="buffered",
            write_interval=timing.write_interval_s,
            max_batch=timing.buffered_max_batch,
        )

    def beat(self, worker: int, agent: uuid.UUID, replica: uuid.UUID, at: datetime) -> None:
        self._client.beat(agent, replica_id=replica, at=at)

    def close(self) -> None:
        self._client.close()


STRATEGIES: dict[str, type[Direct | AppBatch | Staged | Buffered]] = {
    cls.name: cls for cls in (Direct, AppBatch, CoderBatch, Staged, Buffered)
}


def make_strategy(name: str, dsn: str, workers: int, timing: Timing) -> Strategy:
    return STRATEGIES[name](dsn, workers, timing)


# -- flushers ----------------------------------------------------------------------------------


class Flusher(abc.ABC):
    """Whatever runs pybatch.flush() during a staged or buffered run. The bench aligns its
    measuring window with completed flushes, so both ends of it see staging just drained."""

    def __init__(self) -> None:
        self.writes: list[TimedWrite] = []
        self.error: BaseException | None = None
        self._cond = threading.Condition()
        self._completed = 0
        self._hold_after: int | None = None
        self._stopping = False

    @property
    def completed(self) -> int:
        with self._cond:
            return self._completed

    def wait_completed(self, count: int, timeout: float) -> TimedWrite:
        """Wait until `count` flushes have completed; return the count-th one."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._completed < count:
                if self.error is not None:
                    raise self.error
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise FlushFailed(f"no flush completed within {timeout:.0f}s (waiting for flush #{count})")
                self._cond.wait(min(remaining, 0.5))
            return self.writes[count - 1]

    def hold_after(self, count: int | None) -> None:
        """Start no flush after the count-th has completed until hold_after(None): the bench
        reads a window's ends while held, so a flush at the window's edge falls wholly inside
        it or wholly outside. A flusher that does not run the flushes itself (pg_cron's job)
        cannot be held; its window ends are as close as watching flush_log allows."""
        with self._cond:
            self._hold_after = count
            self._cond.notify_all()

    def _wait_while_held(self) -> bool:
        """Called by a flusher's own thread before each flush; False once it is stopping."""
        with self._cond:
            while not self._stopping and self._hold_after is not None and self._completed >= self._hold_after:
                self._cond.wait(0.5)
            return not self._stopping

    def _stop_holding(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def _record(self, write: TimedWrite) -> None:
        with self._cond:
            self.writes.append(write)
            self._completed += 1
            self._cond.notify_all()

    def _fail(self, exc: BaseException) -> None:
        with self._cond:
            self.error = exc
            self._cond.notify_all()

    @abc.abstractmethod
    def start(self, load_started: float) -> None: ...

    @abc.abstractmethod
    def stop(self) -> None: ...


class ScheduledFlush(Flusher):
    """The bench's own scheduler: pybatch.flush.flush(conn) every flush interval, on a fixed
    grid from the load's start (a late flush does not shift the next one)."""

    def __init__(self, dsn: str, interval_s: float) -> None:
        super().__init__()
        self._conn = db.connect(dsn)
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, load_started: float) -> None:
        self._thread = threading.Thread(target=self._run, args=(load_started,), name="bench-flush", daemon=True)
        self._thread.start()

    def _run(self, load_started: float) -> None:
        tick = 1
        try:
            while True:
                due = load_started + tick * self._interval_s
                if self._stop.wait(max(0.0, due - time.monotonic())) or not self._wait_while_held():
                    return
                started = time.monotonic()
                result = flush(self._conn, raise_on_error=True)
                ended = time.monotonic()
                publish_stats(self._conn)
                self._record(TimedWrite(started, ended - started, int(result.agents_updated or 0)))
                tick = max(tick + 1, int((time.monotonic() - load_started) // self._interval_s) + 1)
        except BaseException as exc:
            log.error("bench flush failed: %s", exc)
            self._fail(exc)

    def stop(self) -> None:
        self._stop.set()
        self._stop_holding()
        if self._thread is not None:
            self._thread.join()
        self._conn.close()


class FlushLogWatcher(Flusher):
    """Flushes run by something else (the pg_cron job): watch pybatch.flush_log for them.
    Its connection only reads; the bench leaves its backend out of the CPU figure."""

    QUERY = (
        "SELECT id, pg_catalog.date_part('epoch', duration)::float8, agents_updated, passes, error "
        "FROM pybatch.flush_log WHERE id > %s AND completed_at IS NOT NULL ORDER BY id"
    )

    def __init__(self, dsn: str) -> None:
        super().__init__()
        self.conn: psycopg.Connection = db.connect(dsn)
        row = self.conn.execute("SELECT COALESCE(pg_catalog.max(id), 0) FROM pybatch.flush_log").fetchone()
        self._last_id = int(row[0]) if row else 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-flush-log", daemon=True)

    def start(self, load_started: float) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.wait(FLUSH_LOG_POLL_S):
                rows = self.conn.execute(self.QUERY, (self._last_id,)).fetchall()
                seen = time.monotonic()
                # Completed rows only: a flush writes its row at the hand-off and completes it at
                # its end (a row left incomplete by an interrupted flush is never counted).
                for flush_id, duration_s, agents_updated, passes, error in rows:
                    self._last_id = int(flush_id)
                    if error is not None:
                        raise FlushFailed(f"scheduled flush #{flush_id} failed: {error}")
                    self._record(
                        TimedWrite(seen - float(duration_s), float(duration_s), int(agents_updated), int(passes) + 1)
                    )
        except BaseException as exc:
            log.error("watching pybatch.flush_log failed: %s", exc)
            self._fail(exc)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.conn.close()
