"""pybatch._core: the logic both clients share, without a database."""

from __future__ import annotations

import logging
import threading
import uuid
from datetime import UTC, datetime, timedelta, timezone

import psycopg
import pytest
from psycopg import errors as pg_errors

from pybatch._core import (
    DEFAULT_FUTURE_TOLERANCE,
    FutureTolerance,
    HeartbeatBuffer,
    WriteSchedule,
    WriteTracker,
    agent_uuid,
    check_at,
    client_options,
    newer,
    replica_uuid,
    settle_failed,
    settle_written,
    write_error,
)
from pybatch.errors import (
    ClientClosed,
    ConfigError,
    DatabaseUnavailable,
    HeartbeatWriteError,
    InvalidAgentId,
    InvalidHeartbeat,
    InvalidTimestamp,
    NotMigrated,
    PermissionDenied,
    UnknownAgent,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
LOW, HIGH = uuid.UUID(int=1), uuid.UUID(int=0xFFFF << 112)
A, B = uuid.uuid4(), uuid.uuid4()


def t(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# -- the ordering rule ---------------------------------------------------------------------


def test_newer_follows_the_merge_rule() -> None:
    assert newer(t(2), None, t(1), HIGH)  # later time wins whatever the replica
    assert not newer(t(1), HIGH, t(2), None)
    assert newer(t(1), HIGH, t(1), LOW)  # tie: greater replica
    assert not newer(t(1), LOW, t(1), HIGH)
    assert newer(t(1), LOW, t(1), None)  # tie: NULL lowest
    assert not newer(t(1), None, t(1), LOW)
    assert not newer(t(1), None, t(1), None)
    assert not newer(t(1), LOW, t(1), LOW)


def test_uuid_order_matches_postgresql_byte_order() -> None:
    # PostgreSQL compares uuids bytewise; Python by the 128-bit integer: the same order.
    ids = [uuid.uuid4() for _ in range(200)]
    assert sorted(ids) == sorted(ids, key=lambda u: u.bytes)


def test_equal_instants_in_other_zones_are_a_tie() -> None:
    plus_two = timezone(timedelta(hours=2))
    assert newer(t(0).astimezone(plus_two), HIGH, t(0), LOW)
    assert not newer(t(0).astimezone(plus_two), None, t(0), LOW)


# -- the buffer ----------------------------------------------------------------------------


def test_buffer_keeps_latest_per_agent() -> None:
    buf = HeartbeatBuffer(max_batch=100)
    buf.add(A, LOW, t(1))
    buf.add(A, None, t(3))
    buf.add(A, HIGH, t(2))  # older: ignored
    buf.add(A, LOW, t(3))  # tie: greater than NULL
    buf.add(B, None, t(0))
    assert len(buf) == 2 and buf.accepted == 5
    assert sorted(buf.take()) == sorted([(A, LOW, t(3)), (B, None, t(0))])


def test_failed_write_restores_rows_and_newer_beats_still_win() -> None:
    buf = HeartbeatBuffer(max_batch=100)
    buf.add(A, None, t(1))
    buf.add(B, None, t(1))
    rows = buf.take()
    assert len(buf) == 2  # in flight still counts
    buf.add(A, None, t(5))  # arrives while the write is failing
    assert len(buf) == 3
    buf.restore(rows)
    assert sorted(buf.take()) == sorted([(A, None, t(5)), (B, None, t(1))])


def test_restored_rows_win_over_older_beats_that_arrived_meanwhile() -> None:
    buf = HeartbeatBuffer(max_batch=100)
    buf.add(A, HIGH, t(5))
    rows = buf.take()
    buf.add(A, LOW, t(4))  # older than the one in flight (e.g. a late at=)
    buf.restore(rows)
    assert buf.take() == [(A, HIGH, t(5))]


def test_written_rows_leave_the_buffer() -> None:
    buf = HeartbeatBuffer(max_batch=100)
    buf.add(A, None, t(1))
    rows = buf.take()
    tracker = WriteTracker(max_backoff=1.0)
    settle_written(buf, tracker, rows)
    assert len(buf) == 0 and buf.take() == []
    assert tracker.rows_written == 1 and tracker.last_write_at is not None


def test_buffer_signals_once_when_max_batch_agents_wait() -> None:
    buf = HeartbeatBuffer(max_batch=3)
    signals = [buf.add(agent, None, t(0)) for agent in (A, B, A, B)]
    assert signals == [False, False, False, False]  # repeats of known agents do not count
    assert buf.add(uuid.uuid4(), None, t(0)) is True
    assert buf.add(uuid.uuid4(), None, t(0)) is False  # past the threshold: already signalled
    buf.take()
    assert [buf.add(uuid.uuid4(), None, t(0)) for _ in range(3)] == [False, False, True]


def test_sealed_buffer_refuses_beats() -> None:
    buf = HeartbeatBuffer(max_batch=10)
    buf.add(A, None, t(0))
    buf.seal()
    with pytest.raises(ClientClosed):
        buf.add(B, None, t(0))
    assert buf.take() == [(A, None, t(0))] and buf.accepted == 1


def test_buffer_is_thread_safe() -> None:
    buf = HeartbeatBuffer(max_batch=10**9)
    agents = [uuid.uuid4() for _ in range(64)]
    taken: list[tuple[uuid.UUID, uuid.UUID | None, datetime]] = []
    stop = threading.Event()

    def beat(offset: int) -> None:
        for r in range(300):
            for agent in agents[offset::4]:
                buf.add(agent, None, t(r))

    def drain() -> None:  # a concurrent writer that fails half its writes
        n = 0
        while not stop.is_set():
            rows = buf.take()
            n += 1
            if n % 2:
                buf.restore(rows)
            else:
                taken.extend(rows)
                buf.written(rows)

    drainer = threading.Thread(target=drain)
    drainer.start()
    beaters = [threading.Thread(target=beat, args=(i,)) for i in range(4)]
    for th in beaters:
        th.start()
    for th in beaters:
        th.join()
    stop.set()
    drainer.join()
    taken.extend(buf.take())
    assert buf.accepted == 64 * 300
    latest: dict[uuid.UUID, datetime] = {}
    for agent, _, at in taken:
        latest[agent] = max(at, latest.get(agent, at))
    assert latest == dict.fromkeys(agents, t(299))  # nothing lost, the newest survived every restore


# -- arguments -----------------------------------------------------------------------------


def test_agent_uuid_accepts_uuid_and_its_string() -> None:
    assert agent_uuid(A) is A
    assert agent_uuid(str(A)) == A
    assert agent_uuid(str(A).upper()) == A


@pytest.mark.parametrize("value", [None, "", "nope", 42, A.bytes, 1.5, [str(A)]])
def test_agent_uuid_rejects_and_names_the_value(value: object) -> None:
    with pytest.raises(InvalidAgentId) as info:
        agent_uuid(value)
    assert isinstance(info.value, ValueError)
    assert repr(value) in str(info.value)


def test_replica_uuid() -> None:
    assert replica_uuid(None) is None
    assert replica_uuid(str(LOW)) == LOW
    with pytest.raises(InvalidHeartbeat, match="'r1'"):
        replica_uuid("r1")


def test_check_at() -> None:
    now = t(0)
    assert check_at(None, tolerance=5, now=now) is None
    assert check_at(t(5), tolerance=5, now=now) == t(5)
    assert check_at(t(-3600), tolerance=5, now=now) == t(-3600)  # the past is fine
    with pytest.raises(InvalidTimestamp, match="naive"):
        check_at(datetime(2026, 1, 1), tolerance=5, now=now)
    with pytest.raises(InvalidTimestamp, match="not a datetime"):
        check_at(1767225600, tolerance=5, now=now)
    with pytest.raises(InvalidTimestamp, match=r"6s ahead.*future_tolerance 5s"):
        check_at(t(6), tolerance=5, now=now)
    with pytest.raises(InvalidTimestamp, match="future_tolerance 0s"):
        check_at(t(0.5), tolerance=0, now=now)


def test_client_options() -> None:
    opts = client_options(mode="buffered", write_interval="500ms", max_batch=10, max_backoff="1m", connect_timeout=3)
    assert (opts.write_interval, opts.max_backoff, opts.connect_timeout, opts.buffered) == (0.5, 60.0, 3.0, True)
    for bad in ({"mode": "lazy"}, {"max_batch": 0}, {"max_batch": True}, {"write_interval": "-1s"}):
        args: dict[str, object] = {
            "mode": "immediate",
            "write_interval": "1s",
            "max_batch": 1,
            "max_backoff": "1s",
            "connect_timeout": "1s",
            **bad,
        }
        with pytest.raises(ConfigError):
            client_options(**args)  # type: ignore[arg-type]


# -- outages, backoff, schedule ------------------------------------------------------------


def test_tracker_logs_once_per_outage_and_once_on_recovery(caplog: pytest.LogCaptureFixture) -> None:
    tracker = WriteTracker(max_backoff=2.0, first_retry=0.1)
    caplog.set_level(logging.INFO, logger="pybatch._core")
    delays = [tracker.failed(DatabaseUnavailable("down"), waiting=7) for _ in range(10)]
    assert tracker.write_failures == 10 and tracker.failing_since is not None
    assert [r.levelno for r in caplog.records] == [logging.ERROR]
    assert "keeping 7 heartbeats" in caplog.records[0].getMessage()
    # exponential, with jitter in [0.5, 1], capped
    assert 0.05 <= delays[0] <= 0.1 and 0.1 <= delays[1] <= 0.2 and 0.2 <= delays[2] <= 0.4
    assert all(d <= 2.0 for d in delays) and delays[-1] >= 1.0
    tracker.succeeded(3)
    assert len(caplog.records) == 2 and "recovered" in caplog.records[1].getMessage()
    assert tracker.failing_since is None
    tracker.failed(DatabaseUnavailable("down again"), waiting=1)
    assert len(caplog.records) == 3  # a new outage logs again
    assert 0.05 <= tracker.failed(DatabaseUnavailable("x"), waiting=1) <= 0.2  # backoff restarted


def test_settle_failed_restores_and_types_the_error() -> None:
    buf = HeartbeatBuffer(max_batch=10)
    buf.add(A, None, t(0))
    rows = buf.take()
    tracker = WriteTracker(max_backoff=1.0)
    error, delay = settle_failed(buf, tracker, rows, psycopg.OperationalError("connection refused"), final=False)
    assert isinstance(error, DatabaseUnavailable) and "1 buffered heartbeats" in str(error)
    assert delay > 0 and buf.take() == rows and tracker.write_failures == 1


def test_write_schedule() -> None:
    now = [100.0]
    schedule = WriteSchedule(1.0, clock=lambda: now[0])
    assert schedule.timeout() == 1.0
    assert schedule.should_write(woken=True)  # a full buffer writes at once
    schedule.failed(8.0)
    now[0] += 2
    assert schedule.timeout() == 6.0
    assert not schedule.should_write(woken=True)  # ... but never cuts a backoff short
    now[0] += 6
    assert schedule.should_write(woken=False)
    schedule.wrote()
    assert schedule.timeout() == 1.0 and schedule.should_write(woken=True)


def test_future_tolerance_reads_once_and_falls_back(caplog: pytest.LogCaptureFixture) -> None:
    tol = FutureTolerance()
    assert tol.seconds == DEFAULT_FUTURE_TOLERANCE == 5.0
    assert tol.claim()
    tol.set(42.0)
    assert not tol.claim()  # read once: later connections do not read it again
    assert tol.seconds == 42.0
    failing = FutureTolerance()
    assert failing.claim()
    failing.failed(pg_errors.InsufficientPrivilege("permission denied for table settings"))
    assert failing.seconds == 5.0 and failing.loaded and not failing.claim()
    assert "assuming 5s" in caplog.records[-1].getMessage()
    assert "permission denied" in caplog.records[-1].getMessage()


@pytest.mark.parametrize("value", [None, "soon", object()])
def test_future_tolerance_keeps_the_default_for_an_unusable_value(
    value: object, caplog: pytest.LogCaptureFixture
) -> None:
    tol = FutureTolerance()
    assert tol.claim()
    tol.set(value)
    assert tol.seconds == 5.0
    assert "assuming 5s" in caplog.records[-1].getMessage()


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (pg_errors.NoDataFound("no agent x"), UnknownAgent),
        (pg_errors.InvalidParameterValue("ahead of the server clock"), InvalidTimestamp),
        (pg_errors.NullValueNotAllowed("at must not be NULL"), InvalidHeartbeat),
        (psycopg.OperationalError("server closed the connection"), DatabaseUnavailable),
        (pg_errors.InsufficientPrivilege("permission denied for table heartbeats"), PermissionDenied),
        (pg_errors.UndefinedTable('relation "pybatch.heartbeats" does not exist'), NotMigrated),
        (pg_errors.CheckViolation("violates check constraint"), HeartbeatWriteError),
        (RuntimeError("bug"), HeartbeatWriteError),
        (DatabaseUnavailable("cannot connect to h:1/db"), DatabaseUnavailable),
    ],
)
def test_write_error_maps_to_pybatch_types(exc: BaseException, expected: type[Exception]) -> None:
    error = write_error(exc, "heartbeat of agent x not written")
    assert type(error) is expected
    assert str(error).startswith("heartbeat of agent x not written: ")
