"""Run a flush and return a typed result.

The default path is `CALL pybatch.flush_in_passes()`: it commits after the
hand-off from staging and after each pass (at most one row per heap page), so
the merge's updates stay HOT on a fillfactor-100 table. A procedure can commit
only outside a transaction block, so inside one the flush falls back to
`SELECT pybatch.flush()`: the same steps in the caller's transaction, correct
but not HOT-friendly (docs/design.md).

`flush_in_lanes(conns)` runs the passes of one flush on several sessions at
once, one lane each: the hand-off numbers the passes so that the lanes of a
round share no heap page, and every lane commits before the next round, so
the updates stay HOT (sql/routines/flush/flush_lane_pass.sql).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import IsolationLevel
from psycopg.pq import TransactionStatus
from psycopg.rows import class_row
from psycopg.types.composite import CompositeInfo, register_composite

from pybatch import db
from pybatch.errors import ConfigError, FlushFailed, NotMigrated

log = logging.getLogger(__name__)

CALL_IN_PASSES = "CALL pybatch.flush_in_passes(%s, make_interval(secs => %s), NULL)"
SELECT_IN_TRANSACTION = "SELECT * FROM pybatch.flush(%s, make_interval(secs => %s))"
# A flush in lanes: its steps one by one, each value a pybatch.flush_result.
DISTRIBUTED = "SELECT pybatch.flush_distributed(%s, make_interval(secs => %s))"
BEGIN_IN_LANES = "SELECT pybatch.flush_begin_lanes(%s, make_interval(secs => %s), %s)"
LAST_PASS = "SELECT pybatch.flush_last_pass()"
LANE_PASS = "SELECT pybatch.flush_lane_pass(%s, %s)"
NEXT_PASS = "SELECT pybatch.flush_pass(%s)"
FINISH = "SELECT pybatch.flush_finish(%s)"
TIDY = "SELECT pybatch.flush_tidy()"
MAX_LANES = 64  # as flush_begin_lanes() checks
# What each pass adds to a flush_result; a flush in lanes adds up its lanes'.
ADDED_FIGURES = ("passes", "agents_updated", "stale_heartbeats", "hot_updates", "deferred_agents", "quarantined_agents")


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
    """Load (and dump) pybatch.flush_result as a named tuple, in FlushResult's field order."""
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
    return _reported(result, raise_on_error)


def _reported(result: FlushResult, raise_on_error: bool) -> FlushResult:
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


def flush_in_lanes(
    conns: Sequence[psycopg.Connection],
    *,
    max_rows: int | None = None,
    lock_wait: float = 0.0,
    raise_on_error: bool = False,
) -> FlushResult:
    """Run one flush whose passes merge on every connection at once, one lane each.

    Each connection must be idle, to the same database; the first one hands off and
    finishes. Worth it where one flush's merge keeps one core busy (hundreds of
    thousands of agents) and the server has a core per lane to spare; with one
    connection this is flush(). Same semantics and result as flush(); what a lane
    had not merged when it failed stays pending for the next flush.
    """
    if not conns:
        raise ConfigError("flush_in_lanes needs at least one connection")
    if len(conns) > MAX_LANES:
        raise ConfigError(f"flush_in_lanes: lanes must be between 1 and {MAX_LANES}, not {len(conns)}")
    if len({id(conn) for conn in conns}) != len(conns):
        raise ConfigError("flush_in_lanes needs a connection of its own for each lane")
    busy = [i for i, conn in enumerate(conns) if conn.info.transaction_status != TransactionStatus.IDLE]
    if busy:
        raise ConfigError(f"flush_in_lanes needs idle connections; connection {busy[0]} is in a transaction")
    where = [(conn.info.host, conn.info.port, conn.info.dbname) for conn in conns]
    elsewhere = [i for i, place in enumerate(where) if place != where[0]]
    if elsewhere:
        host, port, dbname = where[elsewhere[0]]
        raise ConfigError(
            f"flush_in_lanes needs connections to one database; connection {elsewhere[0]} is to "
            f"{dbname} on {host}:{port}, connection 0 to {where[0][2]} on {where[0][0]}:{where[0][1]}"
        )
    if len(conns) == 1:
        return flush(conns[0], max_rows=max_rows, lock_wait=lock_wait, raise_on_error=raise_on_error)
    lead = conns[0]
    with db.translated("refusing to flush"):
        lead.execute("SELECT pybatch.check_merge_routines()")
    with db.translated("flush failed"), ExitStack() as stack:
        for conn in conns:
            stack.enter_context(_step_by_step(conn))
        result = _run_lanes(conns, max_rows, lock_wait)
    return _reported(FlushResult(*result), raise_on_error)


@contextmanager
def _step_by_step(conn: psycopg.Connection) -> Iterator[None]:
    """Each step its own read-committed transaction, committed by _step(), whatever the
    role's default isolation (see flush_in_passes.sql); the connection is left as found."""
    autocommit, isolation = conn.autocommit, conn.isolation_level
    _register_result_type(conn)
    if conn.info.transaction_status != TransactionStatus.IDLE:
        conn.rollback()  # the type lookup's implicit transaction
    conn.autocommit, conn.isolation_level = False, IsolationLevel.READ_COMMITTED
    try:
        yield
    finally:
        if not conn.broken:
            if conn.info.transaction_status != TransactionStatus.IDLE:
                conn.rollback()
            conn.autocommit, conn.isolation_level = autocommit, isolation


def _step(conn: psycopg.Connection, query: str, params: tuple[Any, ...] = ()) -> Any:
    """One step of the flush in its own transaction; its one value."""
    row = conn.execute(query, params).fetchone()
    conn.commit()
    assert row is not None  # every step returns one row
    return row[0]


def _run_lanes(conns: Sequence[psycopg.Connection], max_rows: int | None, lock_wait: float) -> Any:
    lead, lanes = conns[0], len(conns)
    distributed = _step(lead, DISTRIBUTED, (max_rows, lock_wait))
    if distributed is not None and distributed.started_at is not None:
        return distributed  # Citus: every worker flushed its shard groups in parallel already
    begun = _step(lead, BEGIN_IN_LANES, (max_rows, lock_wait, lanes))
    done = [begun] * lanes
    if not begun.skipped and begun.error is None:
        last_pass = _step(lead, LAST_PASS)
        with ThreadPoolExecutor(max_workers=lanes - 1, thread_name_prefix="pybatch-lane") as pool:
            for first in range(1, last_pass + 1, lanes):
                # Lane i takes pass first + i; every lane commits before the next round.
                round_passes = {i: first + i for i in range(lanes) if first + i <= last_pass}
                others = {
                    i: pool.submit(_step, conns[i], LANE_PASS, (done[i], n)) for i, n in round_passes.items() if i
                }
                try:
                    done[0] = _step(lead, LANE_PASS, (done[0], first))
                finally:
                    wait(others.values())  # no lane outlives its round, even when one failed
                for i, future in others.items():
                    done[i] = future.result()  # raises a lane's own error
                if any(d.error is not None for d in done):
                    break
    result = _added_up(begun, done)
    # Whatever is left (a pass another flush's hand-off numbered), then the judgement of
    # the agents that failed, as a one-lane flush ends.
    while True:
        before = result.passes
        result = _step(lead, NEXT_PASS, (result,))
        if result.skipped or result.error is not None or result.passes == before:
            break
    result = _step(lead, FINISH, (result,))
    _step(lead, TIDY)
    return result


def _added_up(begun: Any, done: Sequence[Any]) -> Any:
    """One flush_result from its lanes': each lane started from `begun`."""
    added = {
        name: getattr(begun, name) + sum(getattr(d, name) - getattr(begun, name) for d in done)
        for name in ADDED_FIGURES
    }
    newest = [d.newest_event_at for d in done if d.newest_event_at is not None]
    errors = list(dict.fromkeys(d.error for d in done if d.error is not None))
    return begun._replace(
        **added,
        newest_event_at=max(newest, default=begun.newest_event_at),
        error="; ".join(errors) if errors else None,
    )
