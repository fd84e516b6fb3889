"""The bench reads a window's WAL by record type after the window ends: the WAL must still be
there when a checkpoint passed in between (a loaded test run lost it once)."""

from __future__ import annotations

import time

import psycopg

from pybatch.bench.measure import keep_wal, parse_lsn, wal_records, walinspect_schema

SLOT_EXISTS = "SELECT EXISTS (SELECT FROM pg_catalog.pg_replication_slots WHERE slot_name = %s)"


def _lsn(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT pg_catalog.pg_current_wal_insert_lsn()::text").fetchone()
    assert row is not None
    return parse_lsn(str(row[0]))


def _recycle_old_segments(conn: psycopg.Connection) -> None:
    # Each checkpoint may remove or recycle every segment before the one its redo starts in.
    for _ in range(3):
        conn.execute("SELECT pg_catalog.pg_switch_wal()")
        conn.execute("CHECKPOINT")


def _window(conn: psycopg.Connection, schema: str) -> dict[str, object] | None:
    start = _lsn(conn)
    conn.execute("CREATE TABLE wal_window AS SELECT g FROM pg_catalog.generate_series(1, 1000) g")
    end = _lsn(conn)
    _recycle_old_segments(conn)
    return wal_records(conn, schema, start, end, 1000)


def test_the_window_stays_readable_after_checkpoints(empty_conn: psycopg.Connection) -> None:
    schema = walinspect_schema(empty_conn, may_install=True)
    assert schema is not None
    assert keep_wal(empty_conn)
    records = _window(empty_conn, schema)
    assert records is not None
    assert any(record.startswith("Heap") for record in records), records  # the table's rows


def test_without_it_a_checkpoint_takes_the_window(empty_conn: psycopg.Connection) -> None:
    # What keep_wal guards against, so that the test above can fail: here the records are gone.
    schema = walinspect_schema(empty_conn, may_install=True)
    assert schema is not None
    assert _window(empty_conn, schema) is None


def test_the_kept_wal_is_released_with_the_session(empty_dsn: str) -> None:
    with psycopg.connect(empty_dsn, autocommit=True) as holder:
        assert keep_wal(holder)
        name = f"pybatch_bench_{holder.info.backend_pid}"
    # The server drops it as the backend exits, which may finish after the client has closed.
    deadline = time.monotonic() + 60
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        while conn.execute(SLOT_EXISTS, (name,)).fetchone() != (False,):
            assert time.monotonic() < deadline, f"{name} still exists a minute after its session closed"
            time.sleep(0.05)
