# The one source of both clients. pybatch/client.py (HeartbeatClient) is generated from this
# file by `python tools/async_to_sync.py`: edit here, then regenerate (a unit test fails while
# the generated file is stale). `if True:  # ASYNC` blocks hold what only this file runs; their
# `else:` branch is what the sync client runs instead. Names map as tools/async_to_sync.py says.
"""AsyncHeartbeatClient: report connected agents from an app server, immediately or buffered.

Clocks (without at=):
- immediate mode stamps a heartbeat with the **server's** clock (`pg_catalog.now()` of the
  INSERT), so every replica writing immediately shares one clock;
- buffered mode stamps it with **this client's** clock when beat() is called, because the
  row is written up to one write_interval later and the server's clock at write time would
  be late by that much. disconnect() in buffered mode also uses the client's clock, so a
  disconnect after a beat() of this client always sorts after it, even if the two clocks
  differ (with the server's clock, a client clock running ahead would let the buffered beat
  undo the disconnect, the very bug Coder had).

Everything without I/O (the buffer, counters, backoff, argument checks, error mapping and
the SQL) lives in pybatch._core.
"""

from __future__ import annotations

import logging
import math
import types
import weakref
from datetime import UTC, datetime, timedelta
from typing import Protocol, TypeAlias, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from pybatch import db
from pybatch._core import (
    COPY_BEATS,
    COPY_TYPES,
    DISCONNECT,
    INSERT_BEAT,
    READ_FUTURE_TOLERANCE,
    ClientStats,
    FutureTolerance,
    HeartbeatBuffer,
    RecentWrites,
    Row,
    WriteSchedule,
    WriteTracker,
    agent_uuid,
    check_at,
    check_sources,
    client_options,
    replica_uuid,
    settle_failed,
    settle_written,
    write_error,
)
from pybatch.config import resolve_dsn
from pybatch.errors import ClientClosed, ConfigError, InvalidHeartbeat, PybatchError

if True:  # ASYNC
    import asyncio
    import contextlib
    from collections.abc import Awaitable, Callable

    from pybatch.config import describe_dsn
else:
    import threading
    from collections.abc import Callable

log = logging.getLogger(__name__)

T = TypeVar("T")
if True:  # ASYNC
    AsyncWork: TypeAlias = Callable[[psycopg.AsyncConnection], Awaitable[T]]
else:
    Work: TypeAlias = Callable[[psycopg.Connection], T]


class _AsyncConnections(Protocol):
    """Where a client gets a connection for one piece of work."""

    async def run(self, work: AsyncWork[T]) -> T: ...

    async def close(self) -> None: ...


async def _read_tolerance(conn: psycopg.AsyncConnection, tolerance: FutureTolerance) -> None:
    if not tolerance.claim():
        return
    try:
        # A savepoint (or a short transaction): a failed read must not abort the caller's transaction.
        async with conn.transaction():
            cur = await conn.execute(READ_FUTURE_TOLERANCE, prepare=False)
            row = await cur.fetchone()
    except psycopg.Error as exc:
        tolerance.failed(exc)
        return
    tolerance.set(row[0] if row else None)


if True:  # ASYNC

    async def _connect(dsn: str, connect_timeout: int) -> psycopg.AsyncConnection:
        """The async twin of pybatch.db.connect, with the same error translation."""
        try:
            return await psycopg.AsyncConnection.connect(
                dsn,
                autocommit=True,
                connect_timeout=connect_timeout,
                application_name=db.APPLICATION_NAME,
                prepare_threshold=None,  # no server-side prepared statements: a pooler may sit between
                client_encoding=db.CLIENT_ENCODING,
            )
        except psycopg.ProgrammingError as exc:
            raise ConfigError(f"invalid connection string: {db.first_line(exc)}") from None
        except psycopg.Error as exc:
            raise db.translate(exc, f"cannot connect to {describe_dsn(dsn)}") from None


class _OwnConnection:
    """One connection the client opens itself (autocommit: each statement commits), shared
    under a lock. A connection found broken is replaced; work that failed on a reused
    connection gone stale (the server restarted since) is retried once on a fresh one:
    writing a heartbeat or a disconnect twice changes nothing."""

    def __init__(
        self,
        dsn: str,
        connect_timeout: float,
        tolerance: FutureTolerance,
        on_connect: Callable[[], None] | None = None,
    ) -> None:
        self._dsn = dsn
        self._connect_timeout = max(2, math.ceil(connect_timeout))  # libpq's minimum is 2 s
        self._tolerance = tolerance
        self._on_connect = on_connect  # told of every connection opened (RecentWrites.reconnected)
        self._lock = asyncio.Lock()
        self._conn: psycopg.AsyncConnection | None = None

    async def run(self, work: AsyncWork[T]) -> T:
        async with self._lock:
            for attempt in (1, 2):
                fresh = self._conn is None
                if self._conn is None:
                    if True:  # ASYNC
                        self._conn = await _connect(self._dsn, self._connect_timeout)
                    else:
                        self._conn = db.connect(self._dsn, autocommit=True, connect_timeout=self._connect_timeout)
                    if self._on_connect is not None:
                        self._on_connect()
                    await _read_tolerance(self._conn, self._tolerance)
                conn = self._conn
                try:
                    return await work(conn)
                except psycopg.Error:
                    if not (conn.broken or conn.closed):
                        raise
                    self._conn = None
                    await conn.close()
                    if fresh or attempt == 2:
                        raise
            raise AssertionError("unreachable")

    async def close(self) -> None:
        async with self._lock:
            if self._conn is not None:
                await self._conn.close()
                self._conn = None


class _PoolConnections:
    """Connections borrowed from the caller's psycopg_pool.AsyncConnectionPool (committed when returned)."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        timeout: float,
        tolerance: FutureTolerance,
        on_connect: Callable[[], None] | None = None,
    ) -> None:
        self._pool = pool
        self._timeout = timeout
        self._tolerance = tolerance
        self._on_connect = on_connect  # told of every pooled connection not seen before
        self._seen: weakref.WeakSet[psycopg.AsyncConnection] = weakref.WeakSet()

    async def run(self, work: AsyncWork[T]) -> T:
        for attempt in (1, 2):
            used: psycopg.AsyncConnection | None = None
            try:
                async with self._pool.connection(timeout=self._timeout) as conn:
                    used = conn
                    if conn not in self._seen:
                        self._seen.add(conn)
                        if self._on_connect is not None:
                            self._on_connect()
                    await _read_tolerance(conn, self._tolerance)
                    return await work(conn)
            except PoolTimeout:
                raise
            except psycopg.Error:
                # A pooled connection left over from before a server restart: try one more.
                if attempt == 2 or used is None or not used.broken:
                    raise
        raise AssertionError("unreachable")

    async def close(self) -> None:
        """The pool belongs to the caller, who closes it."""


class _CallerConnection:
    """The caller's connection (immediate mode only): work runs in the caller's transaction."""

    def __init__(self, conn: psycopg.AsyncConnection, tolerance: FutureTolerance) -> None:
        self._conn = conn
        self._tolerance = tolerance

    async def run(self, work: AsyncWork[T]) -> T:
        await _read_tolerance(self._conn, self._tolerance)
        return await work(self._conn)

    async def close(self) -> None:
        """The connection belongs to the caller, who closes it."""


class AsyncHeartbeatClient:
    """Writes agent heartbeats to pybatch.heartbeats and disconnects through pybatch.disconnect().

    Where it connects (give at most one): `dsn` (default: PYBATCH_DSN, then libpq's PG*
    variables; with neither, ConfigError: the library never starts a server), `pool` (a
    psycopg_pool.AsyncConnectionPool), or, in immediate mode only, `connection` (a
    psycopg.AsyncConnection: beat() and disconnect() then run inside the caller's transaction
    and commit with it). With a dsn or a pool, beat() in immediate mode has committed when
    it returns.

    mode="immediate": beat() INSERTs one row at once, stamped with the server's clock, and
    raises a pybatch error (DatabaseUnavailable, HeartbeatWriteError, ...) when it cannot.

    mode="buffered": beat() only records the heartbeat in memory, stamped with this client's
    clock, and returns in microseconds, with no I/O. A background writer writes the buffer
    with one COPY every `write_interval`, or as soon as `max_batch` agents wait. Per agent
    the buffer keeps only the latest heartbeat (by time; ties go to the greater replica,
    NULL lowest, as in pybatch.flush()), so memory is bounded by the number of agents, and
    first_connected_at is exact only to one write_interval. When the database fails, the
    writer keeps the rows, retries with exponential backoff (capped at `max_backoff`, 5 s by
    default: well inside the inactive timeout's slack, so a failover delays no beat long), logs
    once per outage and once on recovery, and beat() never raises; newer beats arriving
    meanwhile still win. close(), or leaving the context manager, writes what is left.
    Staging is UNLOGGED, so a crash restart or a failover loses beats written but not yet
    merged: the client keeps each agent's last written beat for `replay_window` (which must
    cover flush_interval plus a flush's own time) and writes them again after any reconnect
    or failed write; the flush makes a duplicate change nothing (docs/ha.md).

    at= (beat and disconnect) must be timezone-aware and no further ahead of this client's
    clock than pybatch.settings.future_tolerance, read when the client first connects; until
    then, or if it cannot be read, the schema default of 5 s applies.

    Any number of callers may call beat() at once. With a dsn, immediate writes share one
    connection (one at a time); give a pool to write in parallel. Counters: `stats`. Call
    close() (or use the client as a context manager): a client never closed drops what is
    still buffered when the process exits.
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        mode: str = "immediate",
        write_interval: str | float | timedelta = "1s",
        max_batch: int = 5000,
        pool: AsyncConnectionPool | None = None,
        connection: psycopg.AsyncConnection | None = None,
        max_backoff: str | float | timedelta = "5s",
        connect_timeout: str | float | timedelta = "5s",
        replay_window: str | float | timedelta = "60s",
    ) -> None:
        self._options = client_options(
            mode=mode,
            write_interval=write_interval,
            max_batch=max_batch,
            max_backoff=max_backoff,
            connect_timeout=connect_timeout,
            replay_window=replay_window,
        )
        check_sources(self._options, dsn=dsn, pool=pool, connection=connection)
        self._tolerance = FutureTolerance()
        self._buffer = HeartbeatBuffer(max_batch)
        self._tracker = WriteTracker(self._options.max_backoff)
        # Buffered mode: each agent's last written beat, written again after a reconnect (see RecentWrites).
        self._recent = RecentWrites(self._options.replay_window)
        on_connect = self._recent.reconnected if self._options.buffered else None
        self._closed = False
        self._direct: _AsyncConnections
        self._writer_connections: _AsyncConnections | None = None
        if pool is not None:
            if not isinstance(pool, AsyncConnectionPool):
                if True:  # ASYNC
                    expected = "psycopg_pool.AsyncConnectionPool"
                    hint = "use HeartbeatClient for a ConnectionPool"
                else:
                    expected = "psycopg_pool.ConnectionPool"
                    hint = "use AsyncHeartbeatClient for an AsyncConnectionPool"
                raise ConfigError(f"pool: expected a {expected}, got {type(pool).__name__} ({hint})")
            self._direct = _PoolConnections(pool, self._options.connect_timeout, self._tolerance, on_connect)
            self._writer_connections = self._direct
        elif connection is not None:
            if not isinstance(connection, psycopg.AsyncConnection):
                raise ConfigError(f"connection: expected a psycopg.AsyncConnection, got {type(connection).__name__}")
            self._direct = _CallerConnection(connection, self._tolerance)
        else:
            resolved = resolve_dsn(dsn).dsn
            self._direct = _OwnConnection(resolved, self._options.connect_timeout, self._tolerance)
            if self._options.buffered:
                # The writer has its own connection: a disconnect must never land inside its COPY.
                self._writer_connections = _OwnConnection(
                    resolved, self._options.connect_timeout, self._tolerance, on_connect
                )
        self._write_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._stopping = False
        self._retry_delay = 0.0
        if True:  # ASYNC
            # Started on first use (_start_writer), not here: __init__ may run outside the event loop.
            self._task: asyncio.Task[None] | None = None
        else:
            self._close_lock = threading.Lock()
            self._thread: threading.Thread | None = None
            if self._options.buffered:
                self._thread = threading.Thread(target=self._run_writer, name="pybatch-heartbeat-writer", daemon=True)
                self._thread.start()

    # -- public API -----------------------------------------------------------------------

    @property
    def mode(self) -> str:
        return self._options.mode

    @property
    def future_tolerance(self) -> float:
        """Seconds an at= may lie ahead of this client's clock (5 until read from pybatch.settings)."""
        return self._tolerance.seconds

    async def beat(self, agent_id: object, *, replica_id: object = None, at: datetime | None = None) -> None:
        """Report that `agent_id` (a uuid.UUID or its string) is connected, seen by `replica_id`.

        Raises InvalidAgentId / InvalidHeartbeat / InvalidTimestamp (all ValueError) for bad
        arguments, ClientClosed after close(); in immediate mode also a pybatch error when the
        write fails. In buffered mode it does no I/O and never raises for a database failure."""
        self._check_open()
        agent = agent_uuid(agent_id)
        replica = replica_uuid(replica_id)
        if self._options.buffered:
            when = check_at(at, tolerance=self._tolerance.seconds)
            if True:  # ASYNC
                self._start_writer()
            if self._buffer.add(agent, replica, when or datetime.now(UTC)):
                self._wake.set()
            return

        counted = False

        async def insert(conn: psycopg.AsyncConnection) -> None:
            nonlocal counted
            # Checked here, after the first connection has read future_tolerance.
            checked_at = check_at(at, tolerance=self._tolerance.seconds)
            if not counted:
                counted = True
                self._tracker.accepted()
            await conn.execute(INSERT_BEAT, (agent, replica, checked_at), prepare=False)

        try:
            await self._direct.run(insert)
        except InvalidHeartbeat:
            raise
        except Exception as exc:
            error = write_error(exc, f"heartbeat of agent {agent} not written")
            self._tracker.failed(error, waiting=None)
            raise error from exc
        self._tracker.succeeded(1)

    async def disconnect(self, agent_id: object, *, at: datetime | None = None) -> bool:
        """Mark the agent disconnected at once through pybatch.disconnect(), bypassing staging.

        Returns True if the row changed, False if a newer heartbeat or disconnect already
        stands. Raises UnknownAgent (a LookupError) for an agent not in workspace_agents,
        InvalidTimestamp beyond future_tolerance, DatabaseUnavailable / HeartbeatWriteError
        when it cannot be written: a lost disconnect is visible to users."""
        self._check_open()
        agent = agent_uuid(agent_id)

        async def call(conn: psycopg.AsyncConnection) -> bool:
            when = check_at(at, tolerance=self._tolerance.seconds)
            if when is None and self._options.buffered:
                when = datetime.now(UTC)  # the clock of this client's buffered beats (module docstring)
            cur = await conn.execute(DISCONNECT, (agent, when), prepare=False)
            row = await cur.fetchone()
            return bool(row and row[0])

        try:
            return await self._direct.run(call)
        except InvalidHeartbeat:
            raise
        except Exception as exc:
            raise write_error(exc, f"disconnect of agent {agent} not written") from exc

    async def flush_buffer(self) -> int:
        """Write the buffer now (buffered mode; a no-op returning 0 in immediate mode).

        Returns the rows written. On failure the rows stay buffered and the pybatch error is raised."""
        self._check_open()
        return await self._write_buffered() if self._options.buffered else 0

    @property
    def stats(self) -> ClientStats:
        """A snapshot of the counters (see ClientStats)."""
        return self._tracker.snapshot(
            beats_accepted=self._buffer.accepted, buffer_size=len(self._buffer), rows_rewritten=self._recent.rewritten
        )

    async def close(self) -> None:
        """Stop the writer, write what is buffered, release connections. Idempotent.

        If that final write fails, the error is raised (after everything is released) and
        names how many heartbeats were not written."""
        if True:  # ASYNC
            if self._closed:
                return
            self._closed = True
        else:
            with self._close_lock:
                if self._closed:
                    return
                self._closed = True
        try:
            if self._options.buffered:
                self._buffer.seal()
                self._stopping = True
                self._wake.set()
                if True:  # ASYNC
                    if self._task is not None:
                        await self._task
                else:
                    if self._thread is not None:
                        self._thread.join()
                await self._write_buffered(final=True)
        finally:
            await self._direct.close()
            if self._writer_connections is not None:
                await self._writer_connections.close()

    async def __aenter__(self) -> AsyncHeartbeatClient:
        if True:  # ASYNC
            if self._options.buffered:
                self._start_writer()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        if exc_type is None:
            await self.close()
            return
        try:
            await self.close()
        except PybatchError:  # do not hide the exception already on its way out
            log.exception("heartbeat client close failed while handling another error")

    # -- internals ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosed("heartbeat client is closed")

    if True:  # ASYNC

        def _start_writer(self) -> None:
            if self._task is None:
                self._task = asyncio.get_running_loop().create_task(self._run_writer(), name="pybatch-heartbeat-writer")

    async def _write_buffered(self, *, final: bool = False) -> int:
        assert self._writer_connections is not None
        async with self._write_lock:
            rows = self._buffer.take()
            if not rows and not self._recent.due():
                if not final and self._recent.watching():
                    await self._check_connection()
                return 0
            again: list[Row] = []

            async def copy(conn: psycopg.AsyncConnection) -> None:
                nonlocal again
                # Asked here, on the connection the rows go to: a reconnect inside run() counts.
                again = self._recent.due()
                async with conn.cursor() as cur, cur.copy(COPY_BEATS) as cp:
                    cp.set_types(list(COPY_TYPES))
                    for row in rows:
                        await cp.write_row(row)
                    for row in again:
                        await cp.write_row(row)

            try:
                await self._writer_connections.run(copy)
            except Exception as exc:
                self._recent.failed()
                error, self._retry_delay = settle_failed(self._buffer, self._tracker, rows, exc, final=final)
                raise error from exc
            settle_written(self._buffer, self._tracker, rows)
            self._recent.written(rows + again, rewritten=len(again))
            if again:
                log.info(
                    "wrote %d recent heartbeats again after a reconnect (staging may have been lost)",
                    len(again),
                    extra={"rows_rewritten": len(again)},
                )
            return len(rows)

    async def _check_connection(self) -> None:
        """An idle writer's round trip while recent rows are kept: a connection found broken is
        replaced (a new connection makes them due); a failure makes them due too."""
        assert self._writer_connections is not None

        async def ping(conn: psycopg.AsyncConnection) -> None:
            await conn.execute("SELECT 1", prepare=False)

        try:
            await self._writer_connections.run(ping)
        except Exception as exc:
            self._recent.failed()
            log.debug("heartbeat writer's connection check failed: %s", db.first_line(exc))

    async def _run_writer(self) -> None:
        """The background writer: every write_interval, at once when max_batch agents wait,
        later (backoff) after a failure. Never dies: every error is counted and logged."""
        assert self._writer_connections is not None

        async def nothing(conn: psycopg.AsyncConnection) -> None:
            return None

        try:  # Connect early, so future_tolerance is known before the first write.
            await self._writer_connections.run(nothing)
        except Exception as exc:
            log.debug("heartbeat writer could not connect yet: %s", db.first_line(exc))
        schedule = WriteSchedule(self._options.write_interval)
        while True:
            if True:  # ASYNC
                woken = False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), schedule.timeout())
                    woken = True
            else:
                woken = self._wake.wait(schedule.timeout())
            if self._stopping:
                return
            self._wake.clear()
            if not schedule.should_write(woken=woken):
                continue
            try:
                await self._write_buffered()
            except PybatchError:
                schedule.failed(self._retry_delay)
                continue
            except Exception:  # a bug, not an outage: keep the writer alive
                log.exception("heartbeat writer failed unexpectedly")
            schedule.wrote()
