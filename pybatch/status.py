"""Inspection: typed reads of the views in schema pybatch (health, staging, flush
history, agent status, table shape), and one `pybatch status` reading of them all.

The views are the source of truth; this module only reads them. The settings live in
pybatch.settings, the JSON document in pybatch.status_document, doctor's checks in
pybatch.doctor.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

import psycopg
from psycopg import sql
from psycopg.rows import class_row

from pybatch import db
from pybatch.errors import ConfigError
from pybatch.settings import Settings, StalenessBudget, read_settings, stored_staleness_budget

log = logging.getLogger(__name__)

HEALTH_STATES = ("ok", "behind", "late", "stalled")  # best first
AGENT_STATES = ("connecting", "connected", "disconnected", "timeout")


@dataclass(frozen=True)
class Health:
    """One row of pybatch.health."""

    last_success_at: datetime | None
    last_success_age: timedelta | None
    flush_interval: timedelta
    status: str
    reason: str
    last_failure_at: datetime | None
    last_error: str | None
    behind: bool | None = None  # None on a hot standby
    worst_staleness: timedelta | None = None
    max_beat_wait: timedelta | None = None
    flush_lock_held_by: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class StagingSummary:
    """One row of pybatch.staging_summary (figures are None when not available)."""

    available: bool
    reason: str | None
    estimated: bool | None
    method: str | None
    rows_staged: int | None
    distinct_agents: int | None
    oldest_beat_at: datetime | None
    newest_beat_at: datetime | None
    oldest_beat_age: timedelta | None
    newest_beat_age: timedelta | None
    size_bytes: int | None
    # Handed off to pybatch.pending, not merged yet (None on a hot standby).
    pending_agents: int | None = None
    pending_beats: int | None = None
    deferred_agents: int | None = None
    oldest_pending_at: datetime | None = None
    oldest_pending_age: timedelta | None = None
    # pybatch.quarantine: agents whose merge failed alone.
    quarantined_agents: int | None = None
    quarantined_beats: int | None = None
    oldest_quarantined_at: datetime | None = None
    quarantine_next_retry_at: datetime | None = None
    quarantine_sample_agent: uuid.UUID | None = None
    quarantine_sample_error: str | None = None


@dataclass(frozen=True)
class FlushRecord:
    """One row of pybatch.flush_history."""

    flush_id: int
    started_at: datetime
    finished_at: datetime
    succeeded: bool
    rows_staged: int
    agents_updated: int
    stale_heartbeats: int
    unknown_heartbeats: int
    future_heartbeats: int
    duration: timedelta
    error: str | None
    passes: int = 0
    hot_updates: int = 0
    deferred_agents: int = 0
    quarantined_agents: int = 0
    newest_event_at: datetime | None = None
    heap_bytes: int | None = None
    index_bytes: int | None = None
    completed_at: datetime | None = None  # None: still running, or interrupted


@dataclass(frozen=True)
class TableShape:
    """One row of pybatch.table_shape(): what public.workspace_agents looks like on disk."""

    fillfactor: int
    heap_bytes: int
    heap_pages: int
    index_count: int
    index_bytes: int
    sampled_pages: int
    live_rows: int
    rows_per_page: Decimal | None
    avg_row_bytes: Decimal | None
    unused_percent: Decimal | None
    method: str
    indexed_flushed_columns: list[str]


@dataclass(frozen=True)
class AgentCounts:
    """Agents by status, and how many have a newer heartbeat waiting in staging (None on a standby)."""

    by_status: dict[str, int]
    newer_heartbeat_staged: int | None

    @property
    def total(self) -> int:
        return sum(self.by_status.values())


@dataclass(frozen=True)
class Status:
    """Everything `pybatch status` shows."""

    in_recovery: bool
    health: Health
    staging: StagingSummary
    recent_flushes: list[FlushRecord]
    agents: AgentCounts
    settings: Settings = field(repr=False)
    staleness: StalenessBudget | None = None


# -- reads ---------------------------------------------------------------------------
def health(conn: psycopg.Connection) -> Health:
    db.require_text_encoding(conn, "status.health")
    query = sql.SQL("SELECT {} FROM pybatch.health").format(db.columns(Health))
    with db.translated("cannot read pybatch.health"), conn.cursor(row_factory=class_row(Health)) as cur:
        row = cur.execute(query).fetchone()
    assert row is not None  # the view always has one row
    return row


def staging(conn: psycopg.Connection) -> StagingSummary:
    query = sql.SQL("SELECT {} FROM pybatch.staging_summary").format(db.columns(StagingSummary))
    with (
        db.translated("cannot read pybatch.staging_summary"),
        conn.cursor(row_factory=class_row(StagingSummary)) as cur,
    ):
        row = cur.execute(query).fetchone()
    assert row is not None
    return row


def recent_flushes(conn: psycopg.Connection, limit: int = 10) -> list[FlushRecord]:
    query = sql.SQL("SELECT {} FROM pybatch.flush_history LIMIT %s").format(db.columns(FlushRecord))
    with db.translated("cannot read pybatch.flush_history"), conn.cursor(row_factory=class_row(FlushRecord)) as cur:
        return cur.execute(query, (limit,)).fetchall()


def table_shape(conn: psycopg.Connection, max_pages: int = 2000) -> TableShape:
    """pybatch.table_shape(): public.workspace_agents measured (every page up to max_pages, else a sample).
    On a Citus coordinator with the table distributed, pybatch.citus_table_shape(): the same figures
    summed over its shards on the workers (the coordinator's table is an empty shell)."""
    function = "table_shape"
    if citus_table(conn):
        function = "citus_table_shape"
    with db.translated("cannot measure public.workspace_agents"), conn.cursor(row_factory=class_row(TableShape)) as cur:
        row = cur.execute(
            sql.SQL("SELECT {} FROM pybatch.{}(%s)").format(db.columns(TableShape), sql.Identifier(function)),
            (max_pages,),
        ).fetchone()
    assert row is not None
    return row


def citus_table(conn: psycopg.Connection) -> bool:
    """Whether public.workspace_agents is a Citus table here (a coordinator with it distributed)."""
    with db.translated("cannot read the Citus metadata"):
        row = conn.execute("SELECT to_regprocedure('pybatch.citus_distributed_table(text)') IS NOT NULL").fetchone()
        if row is None or not row[0]:
            return False
        row = conn.execute("SELECT pybatch.citus_distributed_table('public.workspace_agents')").fetchone()
    return bool(row and row[0])


def agent_counts(conn: psycopg.Connection) -> AgentCounts:
    with db.translated("cannot read pybatch.agent_status"), conn.cursor() as cur:
        rows = cur.execute(
            "SELECT status, count(*), count(*) FILTER (WHERE newer_heartbeat_staged), "
            "bool_or(newer_heartbeat_staged IS NULL) FROM pybatch.agent_status GROUP BY status"
        ).fetchall()
    by_status = {state: 0 for state in AGENT_STATES}
    newer = 0
    unknown = False
    for status, count, staged, staged_unknown in rows:
        by_status[status] = int(count)
        newer += int(staged)
        unknown = unknown or bool(staged_unknown)
    return AgentCounts(by_status, None if unknown else newer)


def installed(conn: psycopg.Connection) -> bool:
    """Whether pybatch is installed in this database (its settings table exists). Needs no privilege."""
    with db.translated("cannot look for pybatch's schema"):
        row = conn.execute("SELECT pg_catalog.to_regclass('pybatch.settings') IS NOT NULL").fetchone()
    return bool(row and row[0])


def in_recovery(conn: psycopg.Connection) -> bool:
    with db.translated("cannot ask the server whether it is a standby"):
        row = conn.execute("SELECT pg_catalog.pg_is_in_recovery()").fetchone()
    return bool(row and row[0])


def status(conn: psycopg.Connection, *, flushes: int = 10) -> Status:
    """Read everything `pybatch status` shows, in one repeatable-read snapshot."""
    db.require_text_encoding(conn, "status.status")
    if not conn.autocommit:
        raise ConfigError("inspect.status needs an autocommit connection (it opens its own transaction)")
    with db.translated("cannot read pybatch status"), conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        return Status(
            in_recovery=in_recovery(conn),
            health=health(conn),
            staging=staging(conn),
            recent_flushes=recent_flushes(conn, flushes),
            agents=agent_counts(conn),
            settings=read_settings(conn),
            staleness=stored_staleness_budget(conn),
        )
