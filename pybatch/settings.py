"""The settings: their model and allowed ranges, the one place that reads and writes
pybatch.settings, and the staleness budget the settings add up to.

The CHECK constraints on pybatch.settings (migrations/0001_baseline.sql) hold the same
bounds as SETTING_BOUNDS; tests/integration/test_settings_bounds.py keeps them equal.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from datetime import timedelta
from typing import TypeVar

import psycopg
from psycopg import sql
from psycopg.rows import class_row

from pybatch import db
from pybatch.durations import DurationTooLong, format_duration, parse_timedelta
from pybatch.errors import ConfigError, InvalidDuration, InvalidSetting

log = logging.getLogger(__name__)

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


# pybatch.settings is read and written here only (the SQL files aside): every other module calls these.
def read_settings(conn: psycopg.Connection) -> Settings:
    """The whole row of pybatch.settings (needs SELECT on every column: owner or reader)."""
    return _read_settings_row(conn, Settings)


def read_flush_settings(conn: psycopg.Connection) -> FlushSettings:
    """The settings a scheduler needs, readable with the flusher grant (see FlushSettings)."""
    return _read_settings_row(conn, FlushSettings)


def _read_settings_row(conn: psycopg.Connection, cls: type[_Row]) -> _Row:
    query = sql.SQL("SELECT {} FROM pybatch.settings").format(db.columns(cls))
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


def store_setting(conn: psycopg.Connection, column: str, value: timedelta | int | None) -> None:
    """Write one already validated setting (see set_setting for the checks a user's value needs)."""
    if column not in SETTABLE:
        raise ConfigError(f"unknown setting {column!r}: choose one of {', '.join(SETTABLE)}")
    with db.translated(f"cannot set {column}"):
        conn.execute(sql.SQL("UPDATE pybatch.settings SET {} = %s").format(sql.Identifier(column)), (value,))


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
            sql.SQL("SELECT {} FROM pybatch.staleness_budget(%s, %s, %s, %s)").format(db.columns(StalenessBudget)),
            (flush_interval, heartbeat_period, client_write_interval, inactive_timeout),
        ).fetchone()
    assert row is not None  # one row while pybatch.settings has its row
    return row


def stored_staleness_budget(conn: psycopg.Connection) -> StalenessBudget:
    """The budget of the stored settings, from view pybatch.staleness (readable by monitoring roles)."""
    with db.translated("cannot read pybatch.staleness"), conn.cursor(row_factory=class_row(StalenessBudget)) as cur:
        row = cur.execute(sql.SQL("SELECT {} FROM pybatch.staleness").format(db.columns(StalenessBudget))).fetchone()
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


# -- settings ------------------------------------------------------------------------
def set_setting(conn: psycopg.Connection, key: str, value: str | int | float | timedelta) -> Settings:
    """Validate and store one setting; return the settings after the change.
    InvalidSetting (a ConfigError) names the key and value when it is malformed or out of range."""
    db.require_text_encoding(conn, "settings.set_setting")
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
