"""AsyncHeartbeatClient: HeartbeatClient for asyncio. Same modes, clocks, buffer rules,
counters and errors (all from pybatch.buffer); only the I/O differs: psycopg's async
connections, and an asyncio task instead of a writer thread. See pybatch.client."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import types
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from pybatch import db
from pybatch.buffer import (
    COPY_BEATS,
    COPY_TYPES,
    DISCONNECT,
    INSERT_BEAT,
    READ_FUTURE_TOLERANCE,
    ClientStats,
    FutureTolerance,
    HeartbeatBuffer,
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
from pybatch.config import describe_dsn, resolve_dsn
from pybatch.errors import ClientClosed, ConfigError, InvalidHeartbeat, PybatchError

log = logging.getLogger(__name__)

T = TypeVar("T")
Work = Callable[[psycopg.AsyncConnection], Awaitable[T]]


class _AsyncConnections(Protocol):
    async def run(self, work: Work[T]) -> T: ...

    async def close(self) -> None: ...


async def _read_tolerance(conn: psycopg.AsyncConnection, tolerance: FutureTolerance) -> None:
    if tolerance.loaded:
        return
    value: object = None
    try:
        # A savepoint (or a short transaction): a failed read must not abort the caller's transaction.
        async with conn.transaction():
            row = await (await conn.execute(READ_FUTURE_TOLERANCE)).fetchone()
        value = row[0] if row else None
    except psycopg.Error as exc:
        error = exc
        tolerance.read(lambda: _raise(error))
        return
    tolerance.read(lambda: value)


def _raise(exc: BaseException) -> object:
    raise exc


async def _connect(dsn: str, connect_timeout: int) -> psycopg.AsyncConnection:
    """The async twin of pybatch.db.connect, with the same error translation."""
    try:
        return await psycopg.AsyncConnection.connect(
            dsn, autocommit=True, connect_timeout=connect_timeout, application_name=db.APPLICATION_NAME,
        )
    except psycopg.ProgrammingError as exc:
        raise ConfigError(f"invalid connection string: {db.first_line(exc)}") from None
    except psycopg.Error as exc:
        raise db.translate(exc, f"cannot connect to {describe_dsn(dsn)}") from None


class _OwnConnection:
    """As pybatch.client._OwnConnection: one autocommit connection, replaced when broken,
    work retried once when a reused connection turns out stale."""

    def __init__(self, dsn: str, connect_timeout: float, tolerance: FutureTolerance) -> None:
        self._dsn = dsn
        self._connect_timeout = max(2, math.ceil(connect_timeout))
        self._tolerance = tolerance
        self._lock = asyncio.Lock()
        self._conn: psycopg.AsyncConnection | None = None

    async def run(self, work: Work[T]) -> T:
        async with self._lock:
            for attempt in (1, 2):
                fresh = self._conn is None
                if self._conn is None:
                    self._conn = await _connect(self._dsn, self._connect_timeout)
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
    def __init__(self, pool: AsyncConnectionPool, timeout: float, tolerance: FutureTolerance) -> None:
        self._pool = pool
        self._timeout = timeout
        self._tolerance = tolerance

    async def run(self, work: Work[T]) -> T:
        for attempt in (1, 2):
            used: psycopg.AsyncConnection | None = None
            try:
                async with self._pool.connection(timeout=self._timeout) as conn:
                    used = conn
                    await _read_tolerance(conn, self._tolerance)
                    return await work(conn)
            except PoolTimeout:
                raise
            except psycopg.Error:
                if attempt == 2 or used is None or not used.broken:
                    raise
        raise AssertionError("unreachable")

    async def close(self) -> None:
        """The pool belongs to the caller."""


class _CallerConnection:
    def __init__(self, conn: psycopg.AsyncConnection, tolerance: FutureTolerance) -> None:
        self._conn = conn
        self._tolerance = tolerance

    async def run(self, work: Work[T]) -> T:
        await _read_tolerance(self._conn, self._tolerance)
        return await work(self._conn)

    async def close(self) -> None:
        """The connection belongs to the caller."""


class AsyncHeartbeatClient:
    """HeartbeatClient for asyncio: `await beat(...)`, `await disconnect(...)`, `async with`.

    Takes a dsn (resolved like the CLI), a psycopg_pool.AsyncConnectionPool, or in immediate
    mode a psycopg.AsyncConnection (then beat() runs in the caller's transaction).

    Immediate mode stamps heartbeats with the server's clock; buffered mode with this client's
    clock at beat() time, and an asyncio task writes the buffer with COPY every write_interval
    or once max_batch agents wait (first_connected_at is therefore exact only to one
    write_interval). On a database failure, buffered mode keeps the rows, retries with capped
    exponential backoff, logs once per outage and never raises into beat(); immediate mode
    raises a pybatch error. future_tolerance is read from pybatch.settings on the first
    connection; 5 s is assumed until then or when it cannot be read.
    Everything else is as documented on pybatch.client.HeartbeatClient.
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
        max_backoff: str | float | timedelta = "30s",
        connect_timeout: str | float | timedelta = "5s",
    ) -> None:
        self._options = client_options(
            mode=mode, write_interval=write_interval, max_batch=max_batch,
            max_backoff=max_backoff, connect_timeout=connect_timeout,
        )
        check_sources(self._options, dsn=dsn, pool=pool, connection=connection)
        self._tolerance = FutureTolerance()
        self._buffer = HeartbeatBuffer(max_batch)
        self._tracker = WriteTracker(self._options.max_backoff)
        self._closed = False
        self._direct: _AsyncConnections
        self._writer_connections: _AsyncConnections | None = None
        if pool is not None:
            if not isinstance(pool, AsyncConnectionPool):
                raise ConfigError(
                    f"pool: expected a psycopg_pool.AsyncConnectionPool, got {type(pool).__name__} "
                    "(use HeartbeatClient for a ConnectionPool)"
                )
            self._direct = _PoolConnections(pool, self._options.connect_timeout, self._tolerance)
            self._writer_connections = self._direct
        elif connection is not None:
            if not isinstance(connection, psycopg.AsyncConnection):
                raise ConfigError(
                    f"connection: expected a psycopg.AsyncConnection, got {type(connection).__name__}"
                )
            self._direct = _CallerConnection(connection, self._tolerance)
        else:
            resolved = resolve_dsn(dsn).dsn
            self._direct = _OwnConnection(resolved, self._options.connect_timeout, self._tolerance)
            if self._options.buffered:
                self._writer_connections = _OwnConnection(resolved, self._options.connect_timeout, self._tolerance)
        self._write_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._stopping = False
        self._retry_delay = 0.0
        self._task: asyncio.Task[None] | None = None

    # -- public API -----------------------------------------------------------------------

    @property
    def mode(self) -> str:
        return self._options.mode

    @property
    def future_tolerance(self) -> float:
        return self._tolerance.seconds

    async def beat(self, agent_id: object, *, replica_id: object = None, at: datetime | None = None) -> None:
        """As HeartbeatClient.beat(); in buffered mode it does no I/O and never raises for the database."""
        self._check_open()
        agent = agent_uuid(agent_id)
        replica = replica_uuid(replica_id)
        if self._options.buffered:
            when = check_at(at, tolerance=self._tolerance.seconds)
            self._start_writer()
            if self._buffer.add(agent, replica, when or datetime.now(UTC)):
                self._wake.set()
            return
        counted = False

        async def insert(conn: psycopg.AsyncConnection) -> None:
            nonlocal counted
            checked_at = check_at(at, tolerance=self._tolerance.seconds)
            if not counted:
                counted = True
                self._tracker.accepted()
            await conn.execute(INSERT_BEAT, (agent, replica, checked_at))

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
        """As HeartbeatClient.disconnect()."""
        self._check_open()
        agent = agent_uuid(agent_id)

        async def call(conn: psycopg.AsyncConnection) -> bool:
            when = check_at(at, tolerance=self._tolerance.seconds)
            if when is None and self._options.buffered:
                when = datetime.now(UTC)  # the clock of this client's buffered beats
            row = await (await conn.execute(DISCONNECT, (agent, when))).fetchone()
            return bool(row and row[0])

        try:
            return await self._direct.run(call)
        except InvalidHeartbeat:
            raise
        except Exception as exc:
            raise write_error(exc, f"disconnect of agent {agent} not written") from exc

    async def flush_buffer(self) -> int:
        """Write the buffer now; returns rows written. On failure the rows stay and the error is raised."""
        self._check_open()
        return await self._write_buffered() if self._options.buffered else 0

    @property
    def stats(self) -> ClientStats:
        return self._tracker.snapshot(beats_accepted=self._buffer.accepted, buffer_size=len(self._buffer))

    async def close(self) -> None:
        """Stop the writer task, write what is buffered, release connections. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._options.buffered:
                self._buffer.seal()
                self._stopping = True
                self._wake.set()
                if self._task is not None:
                    await self._task
                await self._write_buffered(final=True)
        finally:
            await self._direct.close()
            if self._writer_connections is not None:
                await self._writer_connections.close()

    async def __aenter__(self) -> AsyncHeartbeatClient:
        if self._options.buffered:
            self._start_writer()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: types.TracebackType | None,
    ) -> None:
        if exc_type is None:
            await self.close()
            return
        try:
            await self.close()
        except PybatchError:
            log.exception("heartbeat client close failed while handling another error")

    # -- internals ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosed("heartbeat client is closed")

    def _start_writer(self) -> None:
        # Started on first use, not in __init__, which may run outside the event loop.
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run_writer(), name="pybatch-heartbeat-writer")

    async def _write_buffered(self, *, final: bool = False) -> int:
        assert self._writer_connections is not None
        async with self._write_lock:
            rows = self._buffer.take()
            if not rows:
                return 0

            async def copy(conn: psycopg.AsyncConnection) -> None:
                async with conn.cursor() as cur, cur.copy(COPY_BEATS) as cp:
                    cp.set_types(list(COPY_TYPES))
                    for row in rows:
                        await cp.write_row(row)

            try:
                await self._writer_connections.run(copy)
            except Exception as exc:
                error, self._retry_delay = settle_failed(self._buffer, self._tracker, rows, exc, final=final)
                raise error from exc
            settle_written(self._buffer, self._tracker, rows)
            return len(rows)

    async def _run_writer(self) -> None:
        """The writer task; the same schedule as the sync client's thread."""
        assert self._writer_connections is not None

        async def nothing(conn: psycopg.AsyncConnection) -> None:
            return None

        try:  # connect early, so future_tolerance is known before the first write
            await self._writer_connections.run(nothing)
        except Exception as exc:
            log.debug("heartbeat writer could not connect yet: %s", db.first_line(exc))
        schedule = WriteSchedule(self._options.write_interval)
        while True:
            woken = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), schedule.timeout())
                woken = True
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
            except Exception:  # a bug, not an outage: keep the task alive
                log.exception("heartbeat writer failed unexpectedly")
            schedule.wrote()
