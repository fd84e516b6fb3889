"""The `pybatch status --json` document (docs/status-json.md): a stable schema built from
the typed rows of pybatch.status. Durations are seconds (float, keys ending in _seconds),
times ISO 8601, missing figures null. A flush's keys are its FlushRecord fields, so a figure
added to pybatch.flush_history and FlushRecord reaches the document by itself."""

from __future__ import annotations

import uuid
from dataclasses import asdict, fields
from datetime import datetime, timedelta
from typing import Any

from pybatch.settings import DURATION_SETTINGS, Settings, StalenessBudget
from pybatch.status import AGENT_STATES, FlushRecord, Status

SCHEMA_VERSION = 1


def as_json(status: Status) -> dict[str, Any]:
    """The document for one `pybatch status` reading."""
    return {
        "schema_version": SCHEMA_VERSION,
        "in_recovery": status.in_recovery,
        "health": {
            "status": status.health.status,
            "reason": status.health.reason,
            "last_success_at": _iso(status.health.last_success_at),
            "last_success_age_seconds": _seconds(status.health.last_success_age),
            "flush_interval_seconds": _seconds(status.health.flush_interval),
            "last_failure_at": _iso(status.health.last_failure_at),
            "last_error": status.health.last_error,
            "behind": status.health.behind,
            "worst_staleness_seconds": _seconds(status.health.worst_staleness),
            "max_beat_wait_seconds": _seconds(status.health.max_beat_wait),
            "flush_lock_held_by": status.health.flush_lock_held_by,
        },
        "staging": {
            "available": status.staging.available,
            "reason": status.staging.reason,
            "estimated": status.staging.estimated,
            "method": status.staging.method,
            "rows_staged": status.staging.rows_staged,
            "distinct_agents": status.staging.distinct_agents,
            "oldest_beat_at": _iso(status.staging.oldest_beat_at),
            "newest_beat_at": _iso(status.staging.newest_beat_at),
            "oldest_beat_age_seconds": _seconds(status.staging.oldest_beat_age),
            "newest_beat_age_seconds": _seconds(status.staging.newest_beat_age),
            "size_bytes": status.staging.size_bytes,
        },
        "pending": {
            "agents": status.staging.pending_agents,
            "beats": status.staging.pending_beats,
            "deferred_agents": status.staging.deferred_agents,
            "oldest_beat_at": _iso(status.staging.oldest_pending_at),
            "oldest_beat_age_seconds": _seconds(status.staging.oldest_pending_age),
        },
        "quarantine": {
            "agents": status.staging.quarantined_agents,
            "beats": status.staging.quarantined_beats,
            "oldest_quarantined_at": _iso(status.staging.oldest_quarantined_at),
            "next_retry_at": _iso(status.staging.quarantine_next_retry_at),
            "sample_agent": None
            if status.staging.quarantine_sample_agent is None
            else str(status.staging.quarantine_sample_agent),
            "sample_error": status.staging.quarantine_sample_error,
        },
        "staleness": None if status.staleness is None else staleness_as_json(status.staleness),
        "recent_flushes": [flush_as_json(f) for f in status.recent_flushes],
        "agents": {
            "total": status.agents.total,
            "by_status": {state: status.agents.by_status.get(state, 0) for state in AGENT_STATES},
            "newer_heartbeat_staged": status.agents.newer_heartbeat_staged,
        },
        "settings": settings_as_json(status.settings),
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


def flush_as_json(record: FlushRecord) -> dict[str, Any]:
    """One flush: every FlushRecord field under its own name (durations as NAME_seconds)."""
    return {_key(f.name, getattr(record, f.name)): _value(getattr(record, f.name)) for f in fields(record)}


def _key(name: str, value: object) -> str:
    return f"{name}_seconds" if isinstance(value, timedelta) else name


def _value(value: object) -> object:
    if isinstance(value, timedelta):
        return _seconds(value)
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    return value
