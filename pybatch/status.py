"""Inspection: typed reads of the views from migration 0003 (health, staging,
flush history, agent status), the settings, and the `pybatch status` document.

The views are the source of truth; this module only reads them. doctor's checks
live in pybatch.doctor and uninstall in pybatch.uninstall.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.rows import class_row

from pybatch import db
from pybatch.durations import DurationTooLong, format_duration, parse_timedelta
from pybatch.errors import ConfigError, InvalidDuration, InvalidSetting

log = logging.getLogger(__name__)

HEALTH_STATES = ("ok", "behind", "late", "stalled")  # best first
AGENT_STATES = ("connecting", "connected", "disconnected", "timeout")

# Settings `pybatch config set` may change, and how each value is parsed.
# created_workspace_agents is internal (uninstall relies on it) and not settable.
DURATION_SETTINGS = (
    "flush_interval",
    "inactive_timeout",
    "future_tolerance",
    "history_retention",
    "heartbeat_period",
    "client_write_interval",
)
INTEGER_SETTINGS = ("max_rows_per_flush",)
SETTABLE = DURATION_SETTINGS + INTEGER_SETTINGS

# The one place the allowed range of each setting is written down in Python (inclusive bounds).
# Migration 0004's CHECK constraints on pybatch.settings hold the same bounds; `config set`,
# `scheduler --interval`, `cron install --interval` and `flush --max-rows` check against these.
DURATION_BOUNDS: dict[str, tuple[timedelta, timedelta]] = {
    "flush_interval": (timedelta(milliseconds=100), timedelta(hours=1)),
    "inactive_timeout": (timedelta(seconds=1), timedelta(days=1)),
    "future_tolerance": (timedelta(0), timedelta(hours=1)),
    "history_retention": (timedelta(minutes=1), timedelta(days=3650)),
    # Migration 0005: the parts of the staleness budget outside PostgreSQL.
    "heartbeat_period": (timedelta(seconds=1), timedelta(hours=1)),
    "client_write_interval": (timedelta(0), timedelta(hours=1)),
}
COUNT_BOUNDS: dict[str, tuple[int, int]] = {
    "max_rows_per_flush": (1, 1_000_000_000),  # or NULL: no cap
}
SETTING_BOUNDS: dict[str, tuple[timedelta, timedelta] | tuple[int, int]] = {**DURATION_BOUNDS, **COUNT_BOUNDS}
UNLIMITED = ("unlimited", "none", "null")
_Row = TypeVar("_Row")


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


@dataclass(frozen=True)
class StalenessBudget:
    """One row of pybatch.staleness_budget(): how stale last_connected_at can get, against
    inactive_timeout. verdict ok, tight (within, less than the margin) or exceeds; allowed is
    False only for exceeds (what `config set` and `cron install` must refuse)."""

    heartbeat_period: timedelta
    client_write_interval: timedelta
    flush_interval: timedelta
    flush_duration: timedelta
    flush_duration_measured: bool
    worst_staleness: timedelta
    inactive_timeout: timedelta
    margin: timedelta
    max_flush_interval: timedelta | None
    verdict: str
    allowed: bool
    reason: str


# The settings pybatch.staleness_budget() adds up; `config set` of any of them must keep it.
BUDGET_SETTINGS = ("flush_interval", "heartbeat_period", "client_write_interval", "inactive_timeout")


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
class Settings:
    """The row of pybatch.settings."""

    flush_interval: timedelta
    inactive_timeout: timedelta
    future_tolerance: timedelta
    history_retention: timedelta
    max_rows_per_flush: int | None
    created_workspace_agents: bool
    heartbeat_period: timedelta = timedelta(seconds=15)
    client_write_interval: timedelta = timedelta(seconds=1)


@dataclass(frozen=True)
class FlushSettings:
    """The settings the flush schedulers read (pg_cron's install and status, `pybatch scheduler`):
    columns the flusher grant may SELECT, so a flusher role can read them."""

    flush_interval: timedelta
    max_rows_per_flush: int | None


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

    def as_json(self) -> dict[str, Any]:
        """The stable `pybatch status --json` document (docs/status-json.md). Durations are
        seconds (float), times ISO 8601, missing figures null."""
        return {
            "schema_version": 1,
            "in_recovery": self.in_recovery,
            "health": {
                "status": self.health.status,
                "reason": self.health.reason,
                "last_success_at": _iso(self.health.last_success_at),
                "last_success_age_seconds": _seconds(self.health.last_success_age),
                "flush_interval_seconds": _seconds(self.health.flush_interval),
                "last_failure_at": _iso(self.health.last_failure_at),
                "last_error": self.health.last_error,
                "behind": self.health.behind,
                "worst_staleness_seconds": _seconds(self.health.worst_staleness),
                "max_beat_wait_seconds": _seconds(self.health.max_beat_wait),
                "flush_lock_held_by": self.health.flush_lock_held_by,
            },
            "staging": {
                "available": self.staging.available,
                "reason": self.staging.reason,
                "estimated": self.staging.estimated,
                "method": self.staging.method,
                "rows_staged": self.staging.rows_staged,
                "distinct_agents": self.staging.distinct_agents,
                "oldest_beat_at": _iso(self.staging.oldest_beat_at),
                "newest_beat_at": _iso(self.staging.newest_beat_at),
                "oldest_beat_age_seconds": _seconds(self.staging.oldest_beat_age),
                "newest_beat_age_seconds": _seconds(self.staging.newest_beat_age),
                "size_bytes": self.staging.size_bytes,
            },
            "pending": {
                "agents": self.staging.pending_agents,
                "beats": self.staging.pending_beats,
                "deferred_agents": self.staging.deferred_agents,
                "oldest_beat_at": _iso(self.staging.oldest_pending_at),
                "oldest_beat_age_seconds": _seconds(self.staging.oldest_pending_age),
            },
            "quarantine": {
                "agents": self.staging.quarantined_agents,
                "beats": self.staging.quarantined_beats,
                "oldest_quarantined_at": _iso(self.staging.oldest_quarantined_at),
                "next_retry_at": _iso(self.staging.quarantine_next_retry_at),
                "sample_agent": None
                if self.staging.quarantine_sample_agent is None
                else str(self.staging.quarantine_sample_agent),
                "sample_error": self.staging.quarantine_sample_error,
            },
            "staleness": None if self.staleness is None else staleness_as_json(self.staleness),
            "recent_flushes": [
                {
                    "flush_id": f.flush_id,
                    "started_at": _iso(f.started_at),
                    "succeeded": f.succeeded,
                    "rows_staged": f.rows_staged,
                    "agents_updated": f.agents_updated,
                    "stale_heartbeats": f.stale_heartbeats,
                    "unknown_heartbeats": f.unknown_heartbeats,
                    "future_heartbeats": f.future_heartbeats,
                    "duration_seconds": _seconds(f.duration),
                    "error": f.error,
                    "passes": f.passes,
                    "hot_updates": f.hot_updates,
                    "deferred_agents": f.deferred_agents,
                    "quarantined_agents": f.quarantined_agents,
                    "newest_event_at": _iso(f.newest_event_at),
                    "heap_bytes": f.heap_bytes,
                    "index_bytes": f.index_bytes,
                }
                for f in self.recent_flushes
            ],
            "agents": {
                "total": self.agents.total,
                "by_status": {state: self.agents.by_status.get(state, 0) for state in AGENT_STATES},
                "newer_heartbeat_staged": self.agents.newer_heartbeat_staged,
            },
            "settings": settings_as_json(self.settings),
        }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _seconds(value: timedelta | None) -> float | None:
    return None if value is None else round(value.total_seconds(), 3)


def staleness_as_json(budget: StalenessBudget) -> dict[str, Any]:
    return {
        "verdict": budget.verdict,
        "allowed": budget.allowed,
        "reason": budget.reason,
        "heartbeat_period_seconds": _seconds(budget.heartbeat_period),
        "client_write_interval_seconds": _seconds(budget.client_write_interval),
        "flush_interval_seconds": _seconds(budget.flush_interval),
        "flush_duration_seconds": _seconds(budget.flush_duration),
        "flush_duration_measured": budget.flush_duration_measured,
        "worst_staleness_seconds": _seconds(budget.worst_staleness),
        "inactive_timeout_seconds": _seconds(budget.inactive_timeout),
        "margin_seconds": _seconds(budget.margin),
        "max_flush_interval_seconds": _seconds(budget.max_flush_interval),
    }


def settings_as_json(settings: Settings) -> dict[str, Any]:
    data = asdict(settings)
    for key in DURATION_SETTINGS:
        data[f"{key}_seconds"] = _seconds(data.pop(key))
    return data


# -- reads ---------------------------------------------------------------------------
def _columns(cls: type) -> sql.Composable:
    """The dataclass's fields as a column list: a view that gains columns later breaks nothing."""
    return sql.SQL(", ").join(sql.Identifier(f.name) for f in fields(cls))


def health(conn: psycopg.Connection) -> Health:
    db.require_text_encoding(conn, "status.health")
    query = sql.SQL("SELECT {} FROM pybatch.health").format(_columns(Health))
    with db.translated("cannot read pybatch.health"), conn.cursor(row_factory=class_row(Health)) as cur:
        row = cur.execute(query).fetchone()
    assert row is not None  # the view always has one row
    return row


def staging(conn: psycopg.Connection) -> StagingSummary:
    query = sql.SQL("SELECT {} FROM pybatch.staging_summary").format(_columns(StagingSummary))
    with (
        db.translated("cannot read pybatch.staging_summary"),
        conn.cursor(row_factory=class_row(StagingSummary)) as cur,
    ):
        row = cur.execute(query).fetchone()
    assert row is not None
    return row


def recent_flushes(conn: psycopg.Connection, limit: int = 10) -> list[FlushRecord]:
    query = sql.SQL("SELECT {} FROM pybatch.flush_history LIMIT %s").format(_columns(FlushRecord))
    with db.translated("cannot read pybatch.flush_history"), conn.cursor(row_factory=class_row(FlushRecord)) as cur:
        return cur.execute(query, (limit,)).fetchall()


def staleness_budget(
    conn: psycopg.Connection,
    *,
    flush_interval: timedelta | None = None,
    heartbeat_period: timedelta | None = None,
    client_write_interval: timedelta | None = None,
    inactive_timeout: timedelta | None = None,
) -> StalenessBudget:
    """pybatch.staleness_budget(): the stored settings, with any value given here in place of
    the stored one (to judge a value before storing it). Refuse a value when not .allowed."""
    with (
        db.translated("cannot read pybatch.staleness_budget()"),
        conn.cursor(row_factory=class_row(StalenessBudget)) as cur,
    ):
        row = cur.execute(
            sql.SQL("SELECT {} FROM pybatch.staleness_budget(%s, %s, %s, %s)").format(_columns(StalenessBudget)),
            (flush_interval, heartbeat_period, client_write_interval, inactive_timeout),
        ).fetchone()
    assert row is not None  # one row while pybatch.settings has its row
    return row


def stored_staleness_budget(conn: psycopg.Connection) -> StalenessBudget:
    """The budget of the stored settings, from view pybatch.staleness (readable by monitoring roles)."""
    with db.translated("cannot read pybatch.staleness"), conn.cursor(row_factory=class_row(StalenessBudget)) as cur:
        row = cur.execute(sql.SQL("SELECT {} FROM pybatch.staleness").format(_columns(StalenessBudget))).fetchone()
    assert row is not None
    return row


def require_staleness_budget(conn: psycopg.Connection, column: str, value: timedelta) -> StalenessBudget:
    """InvalidSetting naming column and value when storing it would break the staleness budget
    (column: flush_interval, heartbeat_period, client_write_interval or inactive_timeout);
    otherwise the budget it gives (verdict ok, or tight: worth a warning)."""
    if column not in BUDGET_SETTINGS:
        raise ConfigError(f"{column} is not part of the staleness budget ({', '.join(BUDGET_SETTINGS)})")
    budget = staleness_budget(conn, **{column: value})
    if not budget.allowed:
        raise InvalidSetting(column, format_duration(value), f"breaks the staleness budget: {budget.reason}")
    return budget


def table_shape(conn: psycopg.Connection, max_pages: int = 2000) -> TableShape:
    """pybatch.table_shape(): public.workspace_agents measured (every page up to max_pages, else a sample).
    On a Citus coordinator with the table distributed, pybatch.citus_table_shape(): the same figures
    summed over its shards on the workers (the coordinator's table is an empty shell)."""
    function = "table_shape"
    if citus_table(conn):
        function = "citus_table_shape"
    with db.translated("cannot measure public.workspace_agents"), conn.cursor(row_factory=class_row(TableShape)) as cur:
        row = cur.execute(
            sql.SQL("SELECT {} FROM pybatch.{}(%s)").format(_columns(TableShape), sql.Identifier(function)),
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


# pybatch.settings is read and written here only (the SQL files aside): every other module calls these.
def read_settings(conn: psycopg.Connection) -> Settings:
    """The whole row of pybatch.settings (needs SELECT on every column: owner or reader)."""
    return _read_settings_row(conn, Settings)


def read_flush_settings(conn: psycopg.Connection) -> FlushSettings:
    """The settings a scheduler needs, readable with the flusher grant (see FlushSettings)."""
    return _read_settings_row(conn, FlushSettings)


def _read_settings_row(conn: psycopg.Connection, cls: type[_Row]) -> _Row:
    query = sql.SQL("SELECT {} FROM pybatch.settings").format(_columns(cls))
    with db.translated("cannot read pybatch.settings"), conn.cursor(row_factory=class_row(cls)) as cur:
        row = cur.execute(query).fetchone()
    if row is None:
        raise ConfigError("pybatch.settings has no row: the schema is damaged; re-run `pybatch migrate`")
    return row


def read_setting(conn: psycopg.Connection, column: str) -> object:
    """One column of pybatch.settings (SELECT on that column is enough); None when the row is missing.
    For a column an older schema may lack, or a role granted only some columns."""
    if column not in {f.name for f in fields(Settings)}:
        raise ConfigError(f"unknown setting {column!r}: choose one of {', '.join(f.name for f in fields(Settings))}")
    query = sql.SQL("SELECT {} FROM pybatch.settings").format(sql.Identifier(column))
    with db.translated(f"cannot read pybatch.settings.{column}"):
        row = conn.execute(query).fetchone()
    return None if row is None else row[0]


def installed(conn: psycopg.Connection) -> bool:
    """Whether pybatch is installed in this database (its settings table exists). Needs no privilege."""
    with db.translated("cannot look for pybatch's schema"):
        row = conn.execute("SELECT pg_catalog.to_regclass('pybatch.settings') IS NOT NULL").fetchone()
    return bool(row and row[0])


def store_setting(conn: psycopg.Connection, column: str, value: timedelta | int | None) -> None:
    """Write one already validated setting (see set_setting for the checks a user's value needs)."""
    if column not in SETTABLE:
        raise ConfigError(f"unknown setting {column!r}: choose one of {', '.join(SETTABLE)}")
    with db.translated(f"cannot set {column}"):
        conn.execute(sql.SQL("UPDATE pybatch.settings SET {} = %s").format(sql.Identifier(column)), (value,))


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


# -- settings ------------------------------------------------------------------------
def set_setting(conn: psycopg.Connection, key: str, value: str | int | float | timedelta) -> Settings:
    """Validate and store one setting; return the settings after the change.
    InvalidSetting (a ConfigError) names the key and value when it is malformed or out of range."""
    db.require_text_encoding(conn, "status.set_setting")
    column, parsed = parse_setting(key, value)
    if column in BUDGET_SETTINGS:
        assert isinstance(parsed, timedelta)
        budget = require_staleness_budget(conn, column, parsed)  # InvalidSetting when it would not fit
        if budget.verdict == "tight":
            log.warning("%s leaves little margin: %s", column, budget.reason, extra={"staleness": budget.reason})
    store_setting(conn, column, parsed)
    log.info("setting changed", extra={"setting": column, "value": value})
    return read_settings(conn)


def setting_name(key: str) -> str:
    """The column for a user-typed key (`max-rows-per-flush` works too); ConfigError if unknown."""
    column = key.strip().lower().replace("-", "_")
    if column not in SETTABLE:
        raise ConfigError(f"unknown setting {key!r}: choose one of {', '.join(SETTABLE)}")
    return column


def parse_setting(key: str, value: str | int | float | timedelta) -> tuple[str, timedelta | int | None]:
    """The column and typed value for `config set KEY VALUE`: durations as `config show` prints
    them (500ms, 10s, 1m, 2h, 7d or seconds), max_rows_per_flush as ASCII digits or `unlimited`.
    InvalidSetting names the key and value when it is malformed or outside SETTING_BOUNDS."""
    column = setting_name(key)
    if column in INTEGER_SETTINGS:
        if isinstance(value, (timedelta, float)):
            raise InvalidSetting(column, value, "is not a whole number")
        if str(value).strip().lower() in UNLIMITED:
            return column, None
        return column, check_count(column, value)
    try:
        parsed = parse_timedelta(value, name="", allow_zero=True)
    except DurationTooLong:
        raise InvalidSetting(column, value, _out_of_range(column)) from None
    except InvalidDuration as exc:
        raise InvalidSetting(column, value, str(exc).removeprefix(repr(value)).strip()) from None
    return column, check_duration(column, parsed, value)


def check_duration(column: str, value: timedelta, shown: object = None) -> timedelta:
    """value if it lies within SETTING_BOUNDS[column]; InvalidSetting naming column and value otherwise."""
    low, high = DURATION_BOUNDS[column]
    if not low <= value <= high:
        raise InvalidSetting(column, format_duration(value) if shown is None else shown, _out_of_range(column))
    return value


def check_count(column: str, value: str | int) -> int:
    """An integer setting from ASCII digits (no signs, `_` or Unicode digits), within its bounds."""
    low, high = COUNT_BOUNDS[column]
    text = str(value).strip()
    if not (text.isascii() and text.isdigit()):
        raise InvalidSetting(column, value, f"is not a whole number (ASCII digits, {low} to {high})")
    number = int(text)
    if not low <= number <= high:
        raise InvalidSetting(column, value, _out_of_range(column))
    return number


def _out_of_range(column: str) -> str:
    low, high = (format_setting(column, bound) for bound in SETTING_BOUNDS[column])
    return f"is out of range: {column} must be between {low} and {high}"


def format_setting(column: str, value: timedelta | int | bool | None) -> str:
    """A setting as `config set` accepts it back: durations as 10s, 7d, ...; no cap as `unlimited`."""
    if value is None:
        return "unlimited"
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
