"""Call pybatch.flush() and return a typed result."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import class_row

from pybatch import db
from pybatch.errors import FlushFailed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FlushResult:
    """One row of pybatch.flush(): see COMMENT ON TYPE pybatch.flush_result."""

    flush_id: int | None
    started_at: datetime
    skipped: bool
    rows_staged: int | None
    agents_updated: int | None
    stale_heartbeats: int | None
    unknown_heartbeats: int | None
    future_heartbeats: int | None
    duration: timedelta
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None and not self.skipped

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["started_at"] = self.started_at.isoformat()
        data["duration_ms"] = round(self.duration.total_seconds() * 1000, 3)
        del data["duration"]
        return data


def flush(
    conn: psycopg.Connection,
    *,
    max_rows: int | None = None,
    lock_wait: float = 0.0,
    raise_on_error: bool = False,
) -> FlushResult:
    """Run one flush in its own transaction and return what it did.

    A failed flush has already rolled back and kept staging; it is returned with
    `error` set, or raised as FlushFailed when raise_on_error is true.
    """
    with db.translated("flush failed"), conn.transaction(), conn.cursor(row_factory=class_row(FlushResult)) as cur:
        cur.execute(
            "SELECT * FROM pybatch.flush(%s, make_interval(secs => %s))",
            (max_rows, lock_wait),
        )
        result = cur.fetchone()
    assert result is not None  # flush() always returns one row
    extra = {"flush": result.as_dict()}
    if result.error is not None:
        if raise_on_error:  # the caller reports it; logging it too would say it twice
            raise FlushFailed(f"flush failed and kept staging: {result.error}")
        log.error("flush failed and kept staging: %s", result.error, extra=extra)
    elif result.skipped:
        log.info("flush skipped: another flush is running", extra=extra)
    else:
        log.debug("flushed %s rows", result.rows_staged, extra=extra)
    return result
