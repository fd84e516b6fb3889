"""`pybatch scheduler`: a long-running process that flushes every interval, for servers without pg_cron.

Many replicas may run at once. Each holds a dedicated connection and claims the
lease in pybatch.scheduler_lease on it (pybatch.scheduler_claim): the holder
leads and flushes, the others stand by and try again every interval. The leader
renews the lease before each flush; a standby takes it over when it expires or
when the holder's session is gone, so when the leader's process dies a standby
takes over within one interval. The lease lives in a pybatch table, so no role
outside pybatch's grants can hold it (a public advisory key could be held
forever by any role). Flush steps lock pybatch.flush_lock too, so even two
leaders could never double-apply a batch.

The leader flushes on a second connection with CALL pybatch.flush_in_passes(), or, with
`lanes`, on one connection per lane (pybatch.flush.flush_in_lanes).

Each process claims the lease under a token of its own (host, pid and a random part): a pooler
in transaction mode hands each transaction another server backend, so the backend must not be
what identifies the leader (see Lease). On a hot standby the scheduler stands by, checking every
interval, and leads once the server is promoted (or its DSN reaches a primary).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from datetime import timedelta
from types import FrameType
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from pybatch import db
from pybatch.errors import ConfigError, DatabaseUnavailable, PybatchError, StandbyServer
from pybatch.flush import MAX_LANES, FlushResult, flush_in_lanes
from pybatch.settings import read_flush_settings, store_setting

log = logging.getLogger(__name__)

# A lease outlives a few missed renewals before a standby may take it.
LEASE_INTERVALS = 3
LEASE_GRACE_SECONDS = 10.0
BACKOFF_INITIAL = 0.5
BACKOFF_MAX = 5.0
FINAL_FLUSH_LOCK_WAIT = 5.0


class SchedulerMetrics:
    """Prometheus metrics of one scheduler, in their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.flush_duration = Histogram(
            "pybatch_flush_duration_seconds",
            "Duration of pybatch.flush() calls made by this scheduler",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.flushes = Counter(
            "pybatch_flushes", "Flushes run, by outcome (ok, skipped, failed)", ["outcome"], registry=r
        )
        self.rows_merged = Counter("pybatch_rows_merged", "Staged heartbeat rows drained and merged", registry=r)
        self.agents_updated = Counter("pybatch_agents_updated", "workspace_agents rows changed by flushes", registry=r)
        self.staging_rows = Gauge(
            "pybatch_staging_rows", "Rows left in pybatch.heartbeats after the last flush", registry=r
        )
        self.last_success = Gauge(
            "pybatch_last_success_timestamp_seconds", "Unix time the last successful flush ended", registry=r
        )
        self.errors = Counter("pybatch_errors", "Failed flushes and database errors, by kind", ["kind"], registry=r)
        self.leader = Gauge("pybatch_scheduler_leader", "1 while this scheduler holds the leader lock", registry=r)

    def record(self, result: FlushResult) -> None:
        self.flush_duration.observe(result.duration.total_seconds())
        if result.skipped:
            self.flushes.labels("skipped").inc()
        elif result.error is not None:
            self.flushes.labels("failed").inc()
            self.errors.labels("flush").inc()
        else:
            self.flushes.labels("ok").inc()
            self.rows_merged.inc(result.rows_staged or 0)
            self.agents_updated.inc(result.agents_updated or 0)
            self.last_success.set(time.time())


def process_token() -> str:
    """This process's lease token: readable (host:pid) and unique (a random part), so that two
    processes never share one, even with the same pid in two containers."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


class Lease:
    """The scheduler lease (pybatch.scheduler_lease), claimed under this process's token.

    The one place the scheduler talks to the lease SQL. scheduler_claim(holder, ttl) takes or
    renews the lease for `holder`, this token, whichever server backend the statement reaches
    (through a transaction pooler they differ); scheduler_release(holder) gives it up."""

    CLAIM = "SELECT pybatch.scheduler_claim(%s, make_interval(secs => %s))"
    RELEASE = "SELECT pybatch.scheduler_release(%s)"

    def __init__(self, token: str | None = None) -> None:
        self.token = token or process_token()

    def claim(self, conn: psycopg.Connection, ttl: float) -> bool:
        """Take or renew the lease for ttl seconds; false while another live scheduler holds it."""
        with db.translated("cannot claim the scheduler lease"):
            row = conn.execute(self.CLAIM, (self.token, ttl), prepare=False).fetchone()
        return bool(row and row[0])

    def release(self, conn: psycopg.Connection) -> None:
        with suppress(psycopg.Error):
            conn.execute(self.RELEASE, (self.token,), prepare=False)


class StopRequest:
    """A request to stop that a signal handler may make, as well as any thread.

    threading.Event will not do: a signal handler runs in the main thread between two bytecodes,
    and Event.set() takes a lock the main thread holds for a moment inside each Event.wait(), so a
    SIGTERM that lands there waits for itself forever (Python's signal docs warn against locks in
    handlers; a CI run caught a scheduler hung this way). Here set() only writes a flag and one
    byte down a socket pair, and wait() polls the pair, so it wakes at once. Nothing is cleared:
    once asked to stop, the request stays made.
    """

    def __init__(self) -> None:
        self.reason: str | None = None
        self._wake_reader, self._wake_writer = socket.socketpair()
        for end in (self._wake_reader, self._wake_writer):
            end.setblocking(False)

    def set(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        # A full buffer already wakes the reader; a closed pair has no reader left to wake.
        with suppress(OSError):
            self._wake_writer.send(b"\0")

    def is_set(self) -> bool:
        return self.reason is not None

    def wait(self, timeout: float, *conns: psycopg.Connection) -> bool:
        """Wait up to `timeout` seconds for the request. With `conns`, return early too when one
        of those idle connections turns readable (the server is almost always closing it). True
        when a connection spoke, or could not be watched."""
        # poll(), not select(): an application with over 1,024 open files may embed a scheduler.
        try:
            wake = self._wake_reader.fileno()
            poller = select.poll()
            for fd in (wake, *(conn.fileno() for conn in conns)):
                poller.register(fd, select.POLLIN)
            ready = poller.poll(max(timeout, 0.0) * 1000)
        except (OSError, ValueError, psycopg.Error):
            return bool(conns)
        return any(fd != wake for fd, _ in ready)

    def close(self) -> None:
        self._wake_reader.close()
        self._wake_writer.close()


class Scheduler:
    """Leader-elected periodic flusher. run() blocks until request_stop() (or SIGTERM/SIGINT)."""

    def __init__(
        self,
        dsn: str,
        *,
        interval: float | None = None,
        metrics_port: int | None = None,
        metrics: SchedulerMetrics | None = None,
        lanes: int = 1,
    ) -> None:
        if not 1 <= lanes <= MAX_LANES:
            raise ConfigError(f"lanes must be between 1 and {MAX_LANES}, not {lanes}")
        self.dsn = dsn
        self.lanes = lanes
        self.explicit_interval = interval
        self.interval = interval or 10.0  # replaced by settings.flush_interval when not given
        self.metrics_port = metrics_port
        self.metrics = metrics or SchedulerMetrics()
        self._row_cap: int | None = None
        self._stop = StopRequest()
        self._outage_started: float | None = None
        self._backoff = BACKOFF_INITIAL
        self._on_standby = False
        self.lease = Lease()
        self.holder = self.lease.token

    # -- lifecycle --------------------------------------------------------------------
    def request_stop(self, reason: str = "requested") -> None:
        """Safe from any thread and from a signal handler: it logs nothing and takes no lock (the
        loop logs the reason when it stops)."""
        self._stop.set(reason)

    def install_signal_handlers(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            self.request_stop(signal.Signals(signum).name)

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def run(self) -> None:
        server = None
        if self.metrics_port is not None:
            server, _thread = start_http_server(self.metrics_port, registry=self.metrics.registry)
            log.info("serving metrics", extra={"metrics_port": self.metrics_port})
        log.info("scheduler started", extra={"interval": self.explicit_interval})
        try:
            while not self._stop.is_set():
                try:
                    self._session()
                except StandbyServer as exc:
                    self._standby(exc)
                except DatabaseUnavailable as exc:
                    self._database_down(exc)
                except PybatchError as exc:
                    self.metrics.errors.labels("database").inc()
                    log.error("scheduler error, retrying: %s", exc, extra={"error": str(exc)})
                    self._wait_backoff()
        finally:
            self.metrics.leader.set(0)
            if server is not None:
                server.shutdown()
                server.server_close()
            self._stop.close()
        log.info("scheduler stopped", extra={"reason": self._stop.reason})

    # -- one connected session: compete, then lead or stand by ------------------------------------
    def _session(self) -> None:
        with _closing(db.connect(self.dsn)) as lock_conn:
            self._read_settings(lock_conn)
            self._database_up()
            db.require_primary(lock_conn, "scheduler")
            if self._on_standby:
                log.info("the server is a primary now: competing for the lease", extra={"interval": self.interval})
                self._on_standby = False
            announced = False
            while not self._stop.is_set():
                if self._claim(lock_conn):
                    try:
                        self._lead(lock_conn)
                    finally:
                        self._release(lock_conn)
                    return
                if not announced:
                    log.info("standing by: another scheduler leads", extra={"interval": self.interval})
                    announced = True
                self._stop.wait(self.interval)

    def _claim(self, lock_conn: psycopg.Connection) -> bool:
        """Take or renew the lease; false while another live scheduler holds it."""
        return self.lease.claim(lock_conn, LEASE_INTERVALS * self.interval + LEASE_GRACE_SECONDS)

    def _release(self, lock_conn: psycopg.Connection) -> None:
        self.lease.release(lock_conn)

    def _standby(self, exc: StandbyServer) -> None:
        """The server is a hot standby: say so once, then check again every interval (a fresh
        connection each time, so a multi-host DSN finds a promoted node)."""
        if not self._on_standby:
            self._on_standby = True
            log.info(
                "%s; standing by, checking every %gs",
                exc,
                self.interval,
                extra={"interval": self.interval, "error": str(exc)},
            )
        self._backoff = BACKOFF_INITIAL
        self._stop.wait(self.interval)

    def _lead(self, lock_conn: psycopg.Connection) -> None:
        self.metrics.leader.set(1)
        try:
            if self.explicit_interval is not None:
                store_setting(lock_conn, "flush_interval", timedelta(seconds=self.explicit_interval))
            log.info("became leader", extra={"interval": self.interval})
            with ExitStack() as stack:
                # One connection per lane; the first also hands off and finishes each flush.
                flush_conns = [stack.enter_context(_closing(db.connect(self.dsn))) for _ in range(self.lanes)]
                due = time.monotonic()
                while True:
                    self._sleep_until(due, lock_conn, *flush_conns)
                    if self._stop.is_set():
                        log.info("stopping scheduler", extra={"reason": self._stop.reason})
                        self._final_flush(flush_conns)
                        return
                    self._read_settings(lock_conn)
                    if not self._claim(lock_conn):
                        log.warning(
                            "lost the scheduler lease to another scheduler; standing by",
                            extra={"interval": self.interval},
                        )
                        return
                    started = time.monotonic()
                    result = self._flush(flush_conns)
                    due = time.monotonic() if self._capped(result) else max(started + self.interval, time.monotonic())
        finally:
            self.metrics.leader.set(0)

    def _sleep_until(self, due: float, *conns: psycopg.Connection) -> None:
        """Wait for the next tick, a stop request, or the server going away: an idle connection that
        turns readable unasked is almost always the server closing it (a shutdown, a crash, a
        failover), so the leader finds out now, not at its next tick, and reconnects at once."""
        while not self._stop.is_set():
            remaining = due - time.monotonic()
            if remaining <= 0:
                return
            if self._stop.wait(remaining, *conns):
                log.debug("a connection turned readable between flushes: checking the server now")
                return

    def _flush(self, conns: list[psycopg.Connection], *, lock_wait: float = 0.0) -> FlushResult:
        conn = conns[0]
        result = flush_in_lanes(conns, lock_wait=lock_wait)  # logs each flush's statistics at debug
        self.metrics.record(result)
        seconds = result.duration.total_seconds()
        if seconds > self.interval / 2:
            log.warning(
                "flush took %.3fs, over half the %gs interval",
                seconds,
                self.interval,
                extra={"flush": result.as_dict(), "interval": self.interval},
            )
        if self.metrics_port is not None:
            with db.translated("cannot count staged rows"):
                # Through staging_stats(): a flusher has no privilege on the table itself.
                row = conn.execute("SELECT rows_staged FROM pybatch.staging_stats()").fetchone()
            self.metrics.staging_rows.set(row[0] if row else 0)
        return result

    def _final_flush(self, conns: list[psycopg.Connection]) -> None:
        try:
            result = self._flush(conns, lock_wait=FINAL_FLUSH_LOCK_WAIT)
        except PybatchError as exc:
            log.warning("final flush failed, staged rows stay for the next flush: %s", exc, extra={"error": str(exc)})
            return
        log.info("final flush done", extra={"flush": result.as_dict()})

    def _capped(self, result: FlushResult) -> bool:
        """A drain that hit max_rows_per_flush left rows behind: flush again at once."""
        return (
            result.ok
            and self._row_cap is not None
            and result.rows_staged is not None
            and result.rows_staged >= self._row_cap
        )

    def _read_settings(self, conn: psycopg.Connection) -> None:
        settings = read_flush_settings(conn)
        if self.explicit_interval is None:
            self.interval = settings.flush_interval.total_seconds()
        self._row_cap = settings.max_rows_per_flush

    # -- outages: log once, retry with backoff ---------------------------------------------------
    def _database_down(self, exc: PybatchError) -> None:
        self.metrics.errors.labels("database").inc()
        if self._outage_started is None:
            self._outage_started = time.monotonic()
            log.warning("database unavailable, retrying with backoff: %s", exc, extra={"error": str(exc)})
        else:
            log.debug("database still unavailable: %s", exc, extra={"error": str(exc)})
        self._wait_backoff()

    def _database_up(self) -> None:
        if self._outage_started is not None:
            log.warning(
                "database available again after %.1fs",
                time.monotonic() - self._outage_started,
                extra={"outage_seconds": round(time.monotonic() - self._outage_started, 3)},
            )
            self._outage_started = None
        self._backoff = BACKOFF_INITIAL

    def _wait_backoff(self) -> None:
        self._stop.wait(self._backoff)
        # At least one attempt per interval: after a failover the flush resumes within one interval.
        self._backoff = min(self._backoff * 2, BACKOFF_MAX, max(BACKOFF_INITIAL, self.interval))


@contextmanager
def _closing(conn: psycopg.Connection) -> Iterator[psycopg.Connection]:
    """Close without raising: after an outage, closing a dead connection must not mask the cause."""
    try:
        yield conn
    finally:
        with suppress(psycopg.Error):
            conn.close()


def run_scheduler(dsn: str, *, interval: float | None = None, metrics_port: int | None = None, **kwargs: Any) -> None:
    """Run a scheduler in this (main) thread until SIGTERM or SIGINT; a final flush ends it."""
    scheduler = Scheduler(dsn, interval=interval, metrics_port=metrics_port, **kwargs)
    scheduler.install_signal_handlers()
    scheduler.run()
