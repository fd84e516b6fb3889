"""The client core: the logic HeartbeatClient and AsyncHeartbeatClient share, with no I/O
in it: the SQL they send, argument checks, the latest-beat-per-agent buffer, counters,
outage logging, retry backoff and the mapping of database errors to pybatch errors.

The clients only add the I/O: pybatch/aio.py (asyncio), and pybatch/client.py (threads),
which tools/async_to_sync.py generates from it."""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import psycopg

from pybatch import db
from pybatch.durations import format_duration, parse_duration
from pybatch.errors import (
    ClientClosed,
    ConfigError,
    HeartbeatWriteError,
    InvalidAgentId,
    InvalidHeartbeat,
    InvalidTimestamp,
    PybatchError,
    UnknownAgent,
)

log = logging.getLogger(__name__)

Mode = Literal["immediate", "buffered"]
MODES: tuple[Mode, ...] = ("immediate", "buffered")

# Used until pybatch.settings.future_tolerance has been read (and whenever it cannot be):
# the schema's default.
DEFAULT_FUTURE_TOLERANCE = 5.0
# The first retry after a failed buffered write comes this soon; later ones back off to max_backoff.
FIRST_RETRY = 0.1
# How long the buffered client keeps each agent's last written heartbeat, to write it again after a
# reconnect (RecentWrites): it must cover the flush interval and a flush's own time (docs/ha.md).
DEFAULT_REPLAY_WINDOW = 60.0

# The SQL contract with migrations/0001_baseline.sql.
INSERT_BEAT = (
    "INSERT INTO pybatch.heartbeats (agent_id, replica_id, beat_at) VALUES (%s, %s, COALESCE(%s, pg_catalog.now()))"
)
COPY_BEATS = "COPY pybatch.heartbeats (agent_id, replica_id, beat_at) FROM STDIN (FORMAT BINARY)"
COPY_TYPES = ("uuid", "uuid", "timestamptz")
DISCONNECT = "SELECT pybatch.disconnect(%s, COALESCE(%s, pg_catalog.now()))"
READ_FUTURE_TOLERANCE = "SELECT pg_catalog.date_part('epoch', s.future_tolerance)::float8 FROM pybatch.settings s"

Row = tuple[uuid.UUID, uuid.UUID | None, datetime]


# -- options -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientOptions:
    """The constructor arguments both clients share, checked."""

    mode: Mode
    write_interval: float
    max_batch: int
    max_backoff: float
    connect_timeout: float
    replay_window: float = DEFAULT_REPLAY_WINDOW

    @property
    def buffered(self) -> bool:
        return self.mode == "buffered"


def client_options(
    *,
    mode: str,
    write_interval: str | float | timedelta,
    max_batch: int,
    max_backoff: str | float | timedelta,
    connect_timeout: str | float | timedelta,
    replay_window: str | float | timedelta = DEFAULT_REPLAY_WINDOW,
) -> ClientOptions:
    if mode not in MODES:
        raise ConfigError(f"mode: {mode!r} is not one of {', '.join(MODES)}")
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ConfigError(f"max_batch: {max_batch!r} must be a positive integer")
    return ClientOptions(
        mode="buffered" if mode == "buffered" else "immediate",
        write_interval=parse_duration(write_interval, name="write_interval"),
        max_batch=max_batch,
        max_backoff=parse_duration(max_backoff, name="max_backoff"),
        connect_timeout=parse_duration(connect_timeout, name="connect_timeout"),
        replay_window=parse_duration(replay_window, name="replay_window"),
    )


def check_sources(options: ClientOptions, *, dsn: str | None, pool: object, connection: object) -> None:
    """At most one of dsn/pool/connection, and buffered mode never with a single connection."""
    given = [name for name, value in (("dsn", dsn), ("pool", pool), ("connection", connection)) if value]
    if len(given) > 1:
        raise ConfigError(f"give only one of dsn, pool or connection (got {' and '.join(given)})")
    if connection is not None and options.buffered:
        raise ConfigError(
            "mode='buffered' writes from a background writer, so it needs a dsn or a pool, "
            "not a single connection (use mode='immediate' to write inside your own transaction)"
        )


# -- arguments -----------------------------------------------------------------------------


def _as_uuid(value: object) -> uuid.UUID | None:
    """value as a UUID if it is one or its string form, else None."""
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            return None
    return None


def agent_uuid(value: object) -> uuid.UUID:
    """An agent id as a UUID: a uuid.UUID or its string form; anything else raises InvalidAgentId."""
    parsed = _as_uuid(value)
    if parsed is None:
        raise InvalidAgentId(f"agent_id: {value!r} is not a UUID")
    return parsed


def replica_uuid(value: object) -> uuid.UUID | None:
    """A replica id as a UUID, or None (kept as NULL)."""
    if value is None:
        return None
    parsed = _as_uuid(value)
    if parsed is None:
        raise InvalidHeartbeat(f"replica_id: {value!r} is not a UUID or None")
    return parsed


def check_at(at: object, *, tolerance: float, now: datetime | None = None) -> datetime | None:
    """Return at unchanged (None stays None); raise InvalidTimestamp for a naive datetime,
    a non-datetime, or a time more than `tolerance` seconds ahead of this client's clock
    (the server would drop such a heartbeat, or reject such a disconnect)."""
    if at is None:
        return None
    if not isinstance(at, datetime):
        raise InvalidTimestamp(f"at: {at!r} is not a datetime")
    if at.tzinfo is None or at.utcoffset() is None:
        raise InvalidTimestamp(f"at: {at.isoformat()} is a naive datetime; give a timezone-aware one")
    current = now or datetime.now(UTC)
    if at - current > timedelta(seconds=tolerance):
        raise InvalidTimestamp(
            f"at: {at.isoformat()} is {format_duration((at - current).total_seconds())} ahead of this "
            f"client's clock, beyond future_tolerance {format_duration(tolerance) if tolerance else '0s'}"
        )
    return at


def newer(at: datetime, replica: uuid.UUID | None, than_at: datetime, than_replica: uuid.UUID | None) -> bool:
    """The merge's order (pybatch.flush): later beat_at wins; on a tie the greater replica,
    NULL lowest. uuid.UUID compares like PostgreSQL's uuid (by its 128-bit value)."""
    if at != than_at:
        return at > than_at
    if replica is None:
        return False
    return than_replica is None or replica > than_replica


# -- the buffer ----------------------------------------------------------------------------


class HeartbeatBuffer:
    """The latest heartbeat per agent, waiting to be written. Thread-safe.

    Memory is bounded by the number of distinct agents. Rows taken for a write are
    put back with restore() if the write fails, and a newer beat that arrived in the
    meantime still wins, so a failed write loses nothing and never rolls an agent back.
    """

    def __init__(self, max_batch: int) -> None:
        self._lock = threading.Lock()
        self._pending: dict[uuid.UUID, tuple[uuid.UUID | None, datetime]] = {}
        self._in_flight = 0
        self._accepted = 0
        self._sealed = False
        self.max_batch = max_batch

    def add(self, agent: uuid.UUID, replica: uuid.UUID | None, at: datetime) -> bool:
        """Record one heartbeat. True when this one made max_batch agents wait (time to write)."""
        with self._lock:
            if self._sealed:
                raise ClientClosed("heartbeat client is closed")
            self._accepted += 1
            current = self._pending.get(agent)
            if current is None or newer(at, replica, current[1], current[0]):
                self._pending[agent] = (replica, at)
            return current is None and len(self._pending) == self.max_batch

    def take(self) -> list[Row]:
        """Remove and return every waiting heartbeat, for one write."""
        with self._lock:
            pending, self._pending = self._pending, {}
            self._in_flight += len(pending)
        return [(agent, replica, at) for agent, (replica, at) in pending.items()]

    def written(self, rows: list[Row]) -> None:
        """The rows from take() are committed."""
        with self._lock:
            self._in_flight -= len(rows)

    def restore(self, rows: list[Row]) -> None:
        """The write of these rows failed: put them back, unless a newer beat arrived since."""
        with self._lock:
            self._in_flight -= len(rows)
            for agent, replica, at in rows:
                current = self._pending.get(agent)
                if current is None or newer(at, replica, current[1], current[0]):
                    self._pending[agent] = (replica, at)

    def seal(self) -> None:
        """Refuse further heartbeats (close() is running)."""
        with self._lock:
            self._sealed = True

    @property
    def accepted(self) -> int:
        return self._accepted

    def __len__(self) -> int:
        """Heartbeats not yet committed: waiting plus being written."""
        with self._lock:
            return len(self._pending) + self._in_flight


class RecentWrites:
    """Each agent's last heartbeat written to staging, kept for `window` seconds after the write
    that carried it, to write again after a reconnect or a failed write. Thread-safe.

    Staging is UNLOGGED: a crash restart empties it, and a failover promotes a standby that
    never had it. A beat committed to staging but not yet merged dies with it, and its agent
    waits a whole heartbeat period for the next one (past Coder's 30 s, measured: docs/ha.md).
    So after any new connection (other than the first) or failed write, the next write carries
    these rows again. Writing a heartbeat twice changes nothing: the flush folds beats with
    LEAST/GREATEST and rewrites a row only when a value changes. Memory is bounded by the
    number of agents, like the buffer's."""

    def __init__(self, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._window = window
        self._clock = clock
        self._rows: dict[uuid.UUID, tuple[uuid.UUID | None, datetime, float]] = {}
        self._due = False
        self._connected_once = False
        self.rewritten = 0

    def reconnected(self) -> None:
        """A connection was opened: from the second on, the server may have lost staging."""
        with self._lock:
            if self._connected_once:
                self._due = True
            self._connected_once = True

    def failed(self) -> None:
        """A write failed: whatever the cause, the next write carries the recent rows again."""
        with self._lock:
            self._due = True

    def watching(self) -> bool:
        """True while some row is within its window (or a rewrite is due): an idle writer then
        still checks its connection every write interval, so that a failover or crash restart
        is noticed, and these rows written again, even when no new beat arrives."""
        horizon = self._clock() - self._window
        with self._lock:
            if self._due:
                return True
            for agent in [a for a, (_r, _at, written) in self._rows.items() if written < horizon]:
                del self._rows[agent]
            return bool(self._rows)

    def due(self) -> list[Row]:
        """The rows to write again with the next write (empty unless a reconnect or failure came first)."""
        with self._lock:
            if not self._due:
                return []
            return [(agent, replica, at) for agent, (replica, at, _written) in self._rows.items()]

    def written(self, rows: list[Row], rewritten: int = 0) -> None:
        """`rows` committed (the new ones and, among them, `rewritten` written again): keep each
        agent's newest, and forget what was written more than `window` ago."""
        now = self._clock()
        with self._lock:
            for agent, replica, at in rows:
                current = self._rows.get(agent)
                if current is None or not newer(current[1], current[0], at, replica):
                    self._rows[agent] = (replica, at, now)
            horizon = now - self._window
            for agent in [a for a, (_r, _at, written) in self._rows.items() if written < horizon]:
                del self._rows[agent]
            self._due = False
            self.rewritten += rewritten

    def __len__(self) -> int:
        with self._lock:
            return len(self._rows)


# -- counters and outages ------------------------------------------------------------------


@dataclass(frozen=True)
class ClientStats:
    """A read-only snapshot of a client's counters, for metrics.

    beats_accepted: beat() calls that passed validation.
    rows_written: heartbeat rows committed to pybatch.heartbeats (buffered: one per agent per write).
    write_failures: failed write attempts (buffered: each failed COPY, retried later; immediate: each
        beat() that raised after validation).
    buffer_size: heartbeats waiting or being written (always 0 in immediate mode).
    last_write_at: when a write last succeeded (this client's clock, UTC), None before the first.
    failing_since: when the current outage began, None while writes succeed.
    rows_rewritten: recent heartbeats written again after a reconnect or a failed write (buffered
        mode; RecentWrites), not counted in rows_written.
    """

    beats_accepted: int
    rows_written: int
    write_failures: int
    buffer_size: int
    last_write_at: datetime | None
    failing_since: datetime | None
    rows_rewritten: int = 0


class WriteTracker:
    """Counts writes, logs once when an outage begins and once when it ends, and
    computes the retry delay (exponential, capped, with jitter so many replicas do
    not all retry at the same instant after a failover). Thread-safe."""

    def __init__(self, max_backoff: float, *, first_retry: float = FIRST_RETRY) -> None:
        self._lock = threading.Lock()
        self._max_backoff = max_backoff
        self._first_retry = min(first_retry, max_backoff)
        self.beats_accepted = 0  # immediate mode; the buffer counts buffered beats itself
        self.rows_written = 0
        self.write_failures = 0
        self.last_write_at: datetime | None = None
        self.failing_since: datetime | None = None
        self._failures_in_a_row = 0

    def accepted(self) -> None:
        with self._lock:
            self.beats_accepted += 1

    def succeeded(self, rows: int) -> None:
        with self._lock:
            self.rows_written += rows
            self.last_write_at = datetime.now(UTC)
            if self.failing_since is not None:
                outage = (self.last_write_at - self.failing_since).total_seconds()
                log.warning(
                    "heartbeat writes recovered after %s (%d failed attempts)",
                    format_duration(max(outage, 0.001)),
                    self._failures_in_a_row,
                    extra={"outage_seconds": outage, "failed_attempts": self._failures_in_a_row},
                )
            self.failing_since = None
            self._failures_in_a_row = 0

    def failed(self, error: PybatchError, *, waiting: int | None) -> float:
        """Count a failed write; log it if it starts an outage. Returns the delay before a retry.
        waiting: heartbeats kept for the retry (buffered), None when the caller got the error."""
        with self._lock:
            self.write_failures += 1
            self._failures_in_a_row += 1
            if self.failing_since is None:
                self.failing_since = datetime.now(UTC)
                fields = {"error": str(error), "error_type": type(error).__name__, "waiting": waiting}
                if waiting is None:
                    log.error("heartbeat writes failing: %s", error, extra=fields)
                else:
                    log.error(
                        "heartbeat writes failing, keeping %d heartbeats and retrying: %s", waiting, error, extra=fields
                    )
            delay = min(self._max_backoff, self._first_retry * 2.0 ** (self._failures_in_a_row - 1))
        return delay * random.uniform(0.5, 1.0)

    def snapshot(self, *, beats_accepted: int, buffer_size: int, rows_rewritten: int = 0) -> ClientStats:
        with self._lock:
            return ClientStats(
                beats_accepted=beats_accepted + self.beats_accepted,
                rows_written=self.rows_written,
                write_failures=self.write_failures,
                buffer_size=buffer_size,
                last_write_at=self.last_write_at,
                failing_since=self.failing_since,
                rows_rewritten=rows_rewritten,
            )


class WriteSchedule:
    """When the background writer (thread or task) writes next: every write_interval, at
    once when woken because max_batch agents wait, but never before a backoff is over."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._due = clock() + interval
        self._backing_off = False

    def timeout(self) -> float:
        """Seconds to sleep unless woken."""
        return max(0.0, self._due - self._clock())

    def should_write(self, *, woken: bool) -> bool:
        return not (woken and self._backing_off and self._clock() < self._due)

    def wrote(self) -> None:
        self._backing_off = False
        self._due = self._clock() + self._interval

    def failed(self, retry_delay: float) -> None:
        self._backing_off = True
        self._due = self._clock() + retry_delay


def settle_written(buffer: HeartbeatBuffer, tracker: WriteTracker, rows: list[Row]) -> None:
    """A buffered write of `rows` committed."""
    buffer.written(rows)
    tracker.succeeded(len(rows))


def settle_failed(
    buffer: HeartbeatBuffer,
    tracker: WriteTracker,
    rows: list[Row],
    exc: BaseException,
    *,
    final: bool,
) -> tuple[PybatchError, float]:
    """A buffered write of `rows` failed: put them back, count it, and return the pybatch
    error plus the delay before the retry. (If the commit's fate is unknown, writing the
    rows again is harmless: the merge makes a duplicate heartbeat change nothing.)"""
    buffer.restore(rows)
    context = (
        f"final write at close(): {len(rows)} buffered heartbeats not written"
        if final
        else f"write of {len(rows)} buffered heartbeats failed"
    )
    error = write_error(exc, context)
    return error, tracker.failed(error, waiting=len(buffer))


class FutureTolerance:
    """pybatch.settings.future_tolerance as this client knows it: the schema default
    (5 s) until the first connection reads the real value, and for good when it cannot.

    The client reads it once: claim() is True for the one caller that reads, which then
    reports the value with set() or the failure with failed()."""

    def __init__(self) -> None:
        self.seconds = DEFAULT_FUTURE_TOLERANCE
        self.loaded = False

    def claim(self) -> bool:
        """True the first time only: the caller reads READ_FUTURE_TOLERANCE now."""
        if self.loaded:
            return False
        self.loaded = True
        return True

    def set(self, value: object) -> None:
        """The value read (one row's column, or None without a row); keep the default if unusable."""
        try:
            self.seconds = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError) as exc:
            self.failed(exc)

    def failed(self, exc: BaseException) -> None:
        """The read failed: keep the default, and say so."""
        log.warning(
            "cannot read pybatch.settings.future_tolerance, assuming %s: %s",
            format_duration(DEFAULT_FUTURE_TOLERANCE),
            db.first_line(exc),
            extra={"error": db.first_line(exc)},
        )


# -- errors --------------------------------------------------------------------------------


def write_error(exc: BaseException, context: str) -> PybatchError:
    """The pybatch error for a failed write. psycopg errors never reach the caller raw."""
    if isinstance(exc, PybatchError):  # e.g. DatabaseUnavailable from connecting: add what was lost
        return type(exc)(f"{context}: {exc}")
    if not isinstance(exc, psycopg.Error):
        return HeartbeatWriteError(f"{context}: {type(exc).__name__}: {db.first_line(exc)}")
    message = f"{context}: {db.first_line(exc)}"
    if exc.sqlstate == "P0002":  # no_data_found: pybatch.disconnect() of an unknown agent
        return UnknownAgent(message)
    if exc.sqlstate == "22023":  # invalid_parameter_value: beyond future_tolerance
        return InvalidTimestamp(message)
    if exc.sqlstate in ("22004", "23502"):  # NULL where a value is required
        return InvalidHeartbeat(message)
    translated = db.translate(exc, context)
    return HeartbeatWriteError(message) if type(translated) is PybatchError else translated
