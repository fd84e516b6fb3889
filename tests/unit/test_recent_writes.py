"""RecentWrites: the buffered client's last written beat per agent, written again after a reconnect."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from pybatch._core import RecentWrites

A = uuid.UUID("a0000000-0000-4000-8000-000000000001")
B = uuid.UUID("b0000000-0000-4000-8000-000000000002")
R1 = uuid.UUID("00000000-0000-4000-8000-000000000001")
R2 = uuid.UUID("00000000-0000-4000-8000-000000000002")
T0 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_nothing_is_due_until_a_second_connection_or_a_failure() -> None:
    clock = Clock()
    recent = RecentWrites(30, clock)
    recent.reconnected()  # the first connection: nothing can have been lost yet
    recent.written([(A, R1, T0)])
    assert recent.due() == []
    recent.reconnected()
    assert recent.due() == [(A, R1, T0)]
    recent.written([(B, None, T0)], rewritten=0)  # a write after the reconnect clears it
    assert recent.due() == []
    recent.failed()
    assert sorted(recent.due()) == sorted([(A, R1, T0), (B, None, T0)])


def test_keeps_the_newest_beat_per_agent_by_the_merge_order() -> None:
    recent = RecentWrites(30, Clock())
    recent.written([(A, R2, T0 + timedelta(seconds=2))])
    recent.written([(A, R1, T0)])  # an older beat written later (an at= in the past) does not replace it
    recent.written([(A, R2, T0 + timedelta(seconds=2)), (A, None, T0 + timedelta(seconds=2))])
    recent.failed()
    assert recent.due() == [(A, R2, T0 + timedelta(seconds=2))]  # tie: the greater replica, NULL lowest
    recent.written([(A, R1, T0 + timedelta(seconds=3))])
    recent.failed()
    assert recent.due() == [(A, R1, T0 + timedelta(seconds=3))]


def test_forgets_beats_written_longer_ago_than_the_window_before_the_last_write() -> None:
    clock = Clock()
    recent = RecentWrites(10, clock)
    recent.written([(A, None, T0)])
    clock.now += 6
    recent.written([(B, None, T0 + timedelta(seconds=6))])
    clock.now += 5  # A was written 11 s before this write, B 5 s
    recent.written([])
    recent.failed()
    assert recent.due() == [(B, None, T0 + timedelta(seconds=6))]
    # An outage with no writes forgets nothing: what was recent when the server went away stays.
    clock.now += 3600
    assert recent.due() == [(B, None, T0 + timedelta(seconds=6))]


def test_rows_written_again_start_a_new_window_and_are_counted() -> None:
    clock = Clock()
    recent = RecentWrites(10, clock)
    recent.written([(A, None, T0)])
    recent.reconnected()
    recent.reconnected()
    clock.now += 8
    again = recent.due()
    recent.written(again, rewritten=len(again))  # now in the new server's staging, unmerged again
    clock.now += 8
    recent.written([])
    recent.failed()
    assert recent.due() == [(A, None, T0)] and recent.rewritten == 1 and len(recent) == 1


def test_an_idle_writer_watches_until_the_window_has_passed() -> None:
    clock = Clock()
    recent = RecentWrites(10, clock)
    assert not recent.watching()
    recent.written([(A, None, T0)])
    clock.now += 9
    assert recent.watching()
    clock.now += 2
    assert not recent.watching() and len(recent) == 0
    recent.written([(A, None, T0)])
    recent.failed()  # an outage: nothing is forgotten while a rewrite is due
    clock.now += 3600
    assert recent.watching() and recent.due() == [(A, None, T0)]
