"""What the bench measures on the server: CPU from the operating system, WAL from
pg_current_wal_lsn(), row versions and HOT updates from pg_stat_user_tables, and the
staleness of workspace_agents; plus the latency percentiles of the client side."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psutil
import psycopg
from psycopg import sql

from pybatch import db, resources

log = logging.getLogger(__name__)


def parse_lsn(text: str) -> int:
    """'16/B374D848' -> byte position."""
    high, low = text.split("/")
    return (int(high, 16) << 32) + int(low, 16)


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile (fraction in [0, 1]); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(frozen=True)
class TableCounters:
    """Cumulative server counters at one moment."""

    wal_bytes: int
    row_updates: int
    hot_updates: int
    log_updates: int = 0  # row versions of pybatch.flush_log updated (a flush's passes and its end)

    def minus(self, earlier: TableCounters) -> TableCounters:
        return TableCounters(
            self.wal_bytes - earlier.wal_bytes,
            self.row_updates - earlier.row_updates,
            self.hot_updates - earlier.hot_updates,
            self.log_updates - earlier.log_updates,
        )


def read_counters(conn: psycopg.Connection) -> TableCounters:
    with db.translated("cannot read the server counters"):
        row = conn.execute(resources.read_sql("bench/table_counters.sql")).fetchone()
    assert row is not None
    wal_lsn, n_tup_upd, n_tup_hot_upd, _n_tup_ins, log_updates = row
    return TableCounters(parse_lsn(str(wal_lsn)), int(n_tup_upd), int(n_tup_hot_upd), int(log_updates))


def format_lsn(position: int) -> str:
    """The inverse of parse_lsn: 95039387720 -> '16/2374D848'."""
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"


def walinspect_schema(conn: psycopg.Connection, *, may_install: bool) -> str | None:
    """The schema of pg_walinspect in conn's database, installing it when may_install
    (the bench's own scratch database: never a user's). None when it is unavailable."""
    query = (
        "SELECT n.nspname FROM pg_catalog.pg_extension e"
        " JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_walinspect'"
    )
    row = conn.execute(query).fetchone()
    if row is None and may_install:
        try:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
        except psycopg.Error as exc:
            log.info("WAL by record type unavailable: %s", db.first_line(exc), extra={"reason": db.first_line(exc)})
            return None
        row = conn.execute(query).fetchone()
    return None if row is None else str(row[0])


def keep_wal(conn: psycopg.Connection) -> bool:
    """Keep the server's WAL from now until conn's session ends, so that wal_records() can still
    read a window after a checkpoint has recycled its segments (one did, in a loaded test run).
    A temporary physical replication slot: it goes with the session, even if the bench dies.
    False, with the reason logged, where the role or the server does not allow one."""
    name = f"pybatch_bench_{conn.info.backend_pid}"
    try:
        conn.execute("SELECT pg_catalog.pg_create_physical_replication_slot(%s, true, true)", (name,))
    except psycopg.Error as exc:
        log.info(
            "WAL of the window may be recycled before it is read: %s",
            db.first_line(exc),
            extra={"reason": db.first_line(exc)},
        )
        return False
    return True


def wal_records(conn: psycopg.Connection, schema: str | None, start: int, end: int, per: int) -> dict[str, Any] | None:
    """WAL between two positions by record type, each as records and bytes per `per`
    (heartbeats or merged rows): {"Heap/HOT_UPDATE": {"records": 1.0, "bytes": 110.3, "fpi_bytes": 0.0}, ...}."""
    if schema is None or per <= 0 or end <= start:
        return None
    query = sql.SQL(resources.read_sql("bench/wal_records.sql")).format(walinspect=sql.Identifier(schema))
    try:
        rows = conn.execute(query, {"start_lsn": format_lsn(start), "end_lsn": format_lsn(end)}).fetchall()
    except psycopg.Error as exc:  # WAL recycled already, or no privilege on the functions
        log.info("WAL by record type unavailable: %s", db.first_line(exc), extra={"reason": db.first_line(exc)})
        return None
    return {
        str(record): {
            "records": round(count / per, 4),
            "bytes": round(size / per, 1),
            "fpi_bytes": round(fpi / per, 1),
        }
        for record, count, size, fpi in rows
    }


def relation_update_records(
    conn: psycopg.Connection, schema: str | None, start: int, end: int, relations: Sequence[str]
) -> int | None:
    """Heap UPDATE records (HOT or not) between two positions that change `relations` of this
    database: the row versions the WAL holds for them, whatever else the server wrote meanwhile."""
    if schema is None or end <= start:
        return None
    query = sql.SQL(resources.read_sql("bench/wal_update_records.sql")).format(walinspect=sql.Identifier(schema))
    params = {"start_lsn": format_lsn(start), "end_lsn": format_lsn(end), "relations": list(relations)}
    try:
        row = conn.execute(query, params).fetchone()
    except psycopg.Error as exc:  # WAL recycled already, or no privilege on the functions
        log.info("WAL records unavailable: %s", db.first_line(exc), extra={"reason": db.first_line(exc)})
        return None
    return None if row is None else int(row[0])


def backend_cpu_ms(pid: int) -> int:
    """CPU used so far by one process of this machine (a server backend), ms; /proc counts in
    10 ms ticks."""
    times = psutil.Process(pid).cpu_times()
    return round(float(times.user + times.system) * 1000)


def backend_pid(conn: psycopg.Connection) -> int:
    return int(conn.info.backend_pid)


class ServerCpu:
    """CPU seconds used by every process of one PostgreSQL server, read from /proc.

    The total is the postmaster's own time, plus the time of its children that have
    exited (the kernel adds it to the postmaster's children times when it reaps
    them), plus the time of the children alive now. A difference of two totals
    therefore counts short-lived backends and autovacuum workers exactly.
    The bench's own measuring backends are left out.
    """

    def __init__(self, postmaster: psutil.Process, excluded_pids: Iterable[int] = ()) -> None:
        self._postmaster = postmaster
        self.excluded_pids = set(excluded_pids)

    @classmethod
    def find(cls, conn: psycopg.Connection) -> ServerCpu | None:
        """The server behind conn, if it runs on this machine and /proc can be read."""
        try:
            backend = psutil.Process(backend_pid(conn))
            postmaster = backend.parent()
            if postmaster is None or "postgres" not in postmaster.name().lower() + " ".join(postmaster.cmdline()):
                return None
            postmaster.cpu_times()
            return cls(postmaster)
        except (psutil.Error, OSError):
            log.info("server CPU unavailable: the server is not a process on this machine")
            return None

    def total_seconds(self) -> float:
        own = self._postmaster.cpu_times()
        total = own.user + own.system + own.children_user + own.children_system
        for child in self._postmaster.children():
            if child.pid in self.excluded_pids:
                continue
            try:
                times = child.cpu_times()
            except psutil.NoSuchProcess:
                continue  # exited between the listing and the read: now in children_* next time
            total += times.user + times.system
        return float(total)

    def excluded_seconds(self) -> float:
        total = 0.0
        for pid in self.excluded_pids:
            try:
                times = psutil.Process(pid).cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total


class StalenessMonitor:
    """Samples the worst age of last_connected_at over the bench agents, in a thread
    with its own connection (whose backend the CPU figure leaves out)."""

    def __init__(self, dsn: str, id_range: tuple[object, object], interval_s: float) -> None:
        self._conn = db.connect(dsn)
        self._query = resources.read_sql("bench/staleness.sql")
        self._range = {"lo": id_range[0], "hi": id_range[1]}
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-staleness", daemon=True)
        self.worst_s: float | None = None
        self.samples = 0

    @property
    def pid(self) -> int:
        return backend_pid(self._conn)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.sample()

    def sample(self) -> None:
        with db.translated("cannot read staleness"):
            row = self._conn.execute(self._query, self._range).fetchone()
        if row is None or row[0] is None:
            return
        age = float(row[0])
        self.samples += 1
        if self.worst_s is None or age > self.worst_s:
            self.worst_s = age

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._conn.close()
