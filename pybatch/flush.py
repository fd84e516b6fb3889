"""Run a flush and return a typed result.

The default path is `CALL pybatch.flush_in_passes()`: it commits after the
hand-off from staging and after each pass (at most one row per heap page), so
the merge's updates stay HOT on a fillfactor-100 table. A procedure can commit
only outside a transaction block, so inside one the flush falls back to
`SELECT pybatch.flush()`: the same steps in the caller's transaction, correct
but not HOT-friendly (docs/design.md).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import class_row
from psycopg.types.composite import CompositeInfo, register_composite

from pybatch import db
from pybatch.errors import FlushFailed, NotMigrated

log = logging.getLogger(__name__)

CALL_IN_PASSES = "CALL pybatch.flush_in_passes(%s, make_interval(secs => %s), NULL)"
SELECT_IN_TRANSACTION = "SELECT * FROM pybatch.flush(%s, make_interval(secs => %s))"


@dataclass(frozen=True)
class FlushResult:
    """One pybatch.flush_result: see COMMENT ON TYPE pybatch.flush_result (same field order)."""

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
    passes: int | None = None
    hot_updates: int | None = None
    deferred_agents: int | None = None
    quarantined_agents: int | None = None
    newest_event_at: datetime | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and not self.skipped

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["started_at"] = self.started_at.isoformat()
        data["newest_event_at"] = self.newest_event_at.isoformat() if self.newest_event_at else None
        data["duration_ms"] = round(self.duration.total_seconds() * 1000, 3)
        del data["duration"]
        return data


def _register_result_type(conn: psycopg.Connection) -> None:
    """Load pybatch.flush_result (the procedure's INOUT value) as a FlushResult."""
    with db.translated("cannot read the type pybatch.flush_result"):
        info = CompositeInfo.fetch(conn, "pybatch.flush_result")
    if info is None:
        raise NotMigrated("pybatch is not installed in this database; run `pybatch migrate`")
    expected = [f.name for f in fields(FlushResult)]
    if list(info.field_names) != expected:
        raise NotMigrated(f"pybatch.flush_result has fields {list(info.field_names)}; run `pybatch migrate`")
    register_composite(info, conn)  # rows come back as named tuples


def flush(
    conn: psycopg.Connection,
    *,
    max_rows: int | None = None,
    lock_wait: float = 0.0,
    raise_on_error: bool = False,
) -> FlushResult:
    """Run one flush and return what it did.

    On an idle connection this is the committed-pass flush; inside an open
    transaction it is the single-transaction flush. A failed flush has kept
    everything it had not merged (in staging or pybatch.pending); it is returned
    with `error` set, or raised as FlushFailed when raise_on_error is true.
    """
    idle = conn.info.transaction_status == TransactionStatus.IDLE
    # pybatch.flush() belongs to the table's owner, who could have altered it; this check
    # belongs to the migrating role (see sql/routines/install/check_merge_routines.sql).
    with db.translated("refusing to flush"):
        conn.execute("SELECT pybatch.check_merge_routines()")
    if idle:
        result = _flush_in_passes(conn, max_rows, lock_wait)
    else:
        log.debug("inside a transaction: flushing with SELECT pybatch.flush()")
        with db.translated("flush failed"), conn.cursor(row_factory=class_row(FlushResult)) as cur:
            cur.execute(SELECT_IN_TRANSACTION, (max_rows, lock_wait))
            row = cur.fetchone()
        assert row is not None  # flush() always returns one row
        result = row
    extra = {"flush": result.as_dict()}
    if result.error is not None:
        if raise_on_error:  # the caller reports it; logging it too would say it twice
            raise FlushFailed(f"flush failed and kept what it had not merged: {result.error}")
        log.error("flush failed and kept what it had not merged: %s", result.error, extra=extra)
    elif result.skipped:
        log.info("flush skipped: another flush holds pybatch.flush_lock", extra=extra)
    else:
        log.debug("flushed %s rows", result.rows_staged, extra=extra)
    return result


def _flush_in_passes(conn: psycopg.Connection, max_rows: int | None, lock_wait: float) -> FlushResult:
    autocommit = conn.autocommit
    with db.translated("flush failed"):
        _register_result_type(conn)
        if conn.info.transaction_status != TransactionStatus.IDLE:
            conn.rollback()  # the type lookup's implicit transaction, when not in autocommit
        conn.autocommit = True  # the procedure commits between passes
        try:
            row = conn.execute(CALL_IN_PASSES, (max_rows, lock_wait)).fetchone()
        finally:
            if not conn.broken:  # a lost connection must surface as itself, not as this
                conn.autocommit = autocommit
    assert row is not None  # the procedure always returns its INOUT value
    return FlushResult(*row[0])
