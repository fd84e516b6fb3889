"""A flush in lanes (pybatch.flush.flush_in_lanes): its numbering, its semantics, HOT, failures.

The passes of one flush merge on several sessions at once. The hand-off numbers them so that
the lanes of a round share no heap page, and every lane commits before the next round starts.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from pybatch.errors import ConfigError, PybatchError
from pybatch.flush import FlushResult, flush, flush_in_lanes
from pybatch.grants import Grant, grant
from pybatch.local import LocalCluster
from tests.helpers import wait_until_blocked_by
from tests.integration.roles import as_role, login_role
from tests.integration.test_flush_passes import (
    POISON_TRIGGER,
    REJECT_ALL_TRIGGER,
    coder_shaped,
    heap_and_indexes,
    make_agents,
    one,
    rounds,
    stage_all,
    unmerged,
)
from tests.integration.test_flush_semantics import event_strategy, play
from tests.model import AgentState, actual_states, expected_states


@pytest.fixture
def lanes(dsn: str) -> Iterator[list[psycopg.Connection]]:
    """Two more sessions on the test's database, for lanes 1 and 2."""
    with ExitStack() as stack:
        yield [stack.enter_context(psycopg.connect(dsn, autocommit=True)) for _ in range(2)]


def pages_of_passes(conn: psycopg.Connection) -> list[tuple[int, int]]:
    """(pass_no, heap page of the agent's row) of every numbered pending row."""
    rows = conn.execute(
        "SELECT p.pass_no, (wa.ctid::text::point)[0]::bigint FROM pybatch.pending p"
        " JOIN public.workspace_agents wa ON wa.id = p.agent_id WHERE p.pass_no IS NOT NULL"
    ).fetchall()
    return [(int(n), int(page)) for n, page in rows]


@pytest.mark.parametrize("lane_count", [1, 2, 3])
def test_the_hand_off_numbers_lanes_that_share_no_page(conn: psycopg.Connection, lane_count: int) -> None:
    agents = coder_shaped(conn, 300)  # ~20 rows a page: 15 pages
    stage_all(conn, agents, datetime.now(UTC) - timedelta(seconds=5))
    begun = conn.execute("SELECT (pybatch.flush_begin_lanes(NULL, '0', %s)).error", (lane_count,)).fetchone()
    assert begun == (None,)
    numbered = pages_of_passes(conn)
    assert len(numbered) == 300
    by_pass: dict[int, list[int]] = {}
    for pass_no, page in numbered:
        by_pass.setdefault(pass_no, []).append(page)
    for pass_no, pages in by_pass.items():
        assert len(pages) == len(set(pages)), pass_no  # one row per page per pass
        lane = (pass_no - 1) % lane_count
        assert all(page % lane_count == lane for page in pages), (pass_no, pages)  # a page has one lane
    # Round k holds the k-th row of every page: a page's pass numbers are its lane's, round by round.
    by_page: dict[int, list[int]] = {}
    for pass_no, page in numbered:
        by_page.setdefault(page, []).append(pass_no)
    for page, passes in by_page.items():
        lane = page % lane_count
        assert sorted(passes) == [lane_count * k + lane + 1 for k in range(len(passes))], page
    assert one(conn, "SELECT pybatch.flush_last_pass()") == max(by_pass)


@pytest.mark.parametrize("bad", [0, -1, 65, None])
def test_a_bad_lane_count_is_refused_and_staging_kept(conn: psycopg.Connection, bad: int | None) -> None:
    stage_all(conn, make_agents(conn, 3), datetime.now(UTC) - timedelta(seconds=5))
    shown = "NULL" if bad is None else str(bad)
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=f"lanes must be between 1 and 64, not {shown}"):
        conn.execute("SELECT pybatch.flush_begin_lanes(NULL, '0', %s)", (bad,))
    assert one(conn, "SELECT count(*) FROM pybatch.heartbeats") == 3


def test_flush_in_lanes_refuses_connections_it_cannot_use(
    conn: psycopg.Connection, lanes: list[psycopg.Connection], pg_cluster: LocalCluster
) -> None:
    with pytest.raises(ConfigError, match="at least one connection"):
        flush_in_lanes([])
    with pytest.raises(ConfigError, match="a connection of its own for each lane"):
        flush_in_lanes([conn, conn])
    with pytest.raises(ConfigError, match="not 65"):
        flush_in_lanes([conn] * 65)
    with (
        psycopg.connect(pg_cluster.url("postgres"), autocommit=True) as elsewhere,
        pytest.raises(ConfigError, match="connection 1 is to postgres on"),
    ):
        flush_in_lanes([conn, elsewhere])
    lanes[1].autocommit = False
    lanes[1].execute("SELECT 1")
    with pytest.raises(ConfigError, match="connection 2 is in a transaction"):
        flush_in_lanes([conn, *lanes])
    lanes[1].rollback()


def agents_on_pages(conn: psycopg.Connection, per_page: tuple[int, ...]) -> list[uuid.UUID]:
    """Agents taken from consecutive heap pages, per_page[i] of page i: lanes with work each."""
    make_agents(conn, 400)  # narrow rows here: ~70 a page, five pages or more
    rows = conn.execute("SELECT id, (ctid::text::point)[0]::int FROM public.workspace_agents ORDER BY ctid").fetchall()
    chosen: list[uuid.UUID] = []
    for page, count in enumerate(per_page):
        on_page = [agent for agent, p in rows if p == page]
        assert len(on_page) >= count, (page, len(on_page))
        chosen += on_page[:count]
    return chosen


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(event_strategy, max_size=25))
def test_any_order_in_lanes_equals_timestamp_order(
    conn: psycopg.Connection, lanes: list[psycopg.Connection], script: list[tuple[str, int, int, uuid.UUID]]
) -> None:
    """The semantics property test of test_flush_semantics.py, flushed in three lanes: two agents
    share page 0 (two rounds of lane 0), one is on page 1 (lane 1), and lane 2 has none."""
    conn.execute("TRUNCATE public.workspace_agents, pybatch.heartbeats, pybatch.pending, pybatch.quarantine")
    agents = agents_on_pages(conn, (2, 1))

    def in_three_lanes(max_rows: int | None) -> None:
        assert flush_in_lanes([conn, *lanes], max_rows=max_rows).error is None

    applied = play(conn, agents, script, in_three_lanes)
    expected = expected_states(applied)
    assert actual_states(conn, agents) == {a: expected.get(a, AgentState()) for a in agents}


def test_lanes_keep_updates_hot_at_fillfactor_100_and_the_heap_stops_growing(
    conn: psycopg.Connection, lanes: list[psycopg.Connection]
) -> None:
    """As test_flush_passes.py's HOT test, in two lanes: the lockstep is what keeps it HOT."""
    agents = coder_shaped(conn, 4000)

    def in_two_lanes(c: psycopg.Connection) -> FlushResult:
        return flush_in_lanes([c, lanes[0]])

    warm = rounds(conn, agents, 5, in_two_lanes)
    heap_before, indexes_before = heap_and_indexes(conn)
    steady = rounds(conn, agents, 10, in_two_lanes, first=5)
    heap_after, indexes_after = heap_and_indexes(conn)
    hot = sum(r.hot_updates or 0 for r in steady) / sum(r.agents_updated or 0 for r in steady)
    assert hot >= 0.95, (hot, [r.hot_updates for r in warm + steady])
    assert heap_after <= heap_before * 1.10, (heap_before, heap_after)
    assert indexes_after <= indexes_before * 1.10, (indexes_before, indexes_after)
    # One flush_log row per flush, with the figures of both lanes added up.
    logged = conn.execute(
        "SELECT agents_updated, passes, hot_updates FROM pybatch.flush_log WHERE completed_at IS NOT NULL"
        " ORDER BY id DESC LIMIT 1"
    ).fetchone()
    last = steady[-1]
    assert logged == (last.agents_updated, last.passes, last.hot_updates)
    assert (last.passes or 0) > 2  # both lanes ran several rounds


def test_a_poison_agent_in_a_lane_is_quarantined_and_the_rest_merge(
    conn: psycopg.Connection, lanes: list[psycopg.Connection]
) -> None:
    agents = agents_on_pages(conn, (5, 5, 5))
    poison = agents[7]  # page 1: lane 1 of two
    conn.execute(sql.SQL(POISON_TRIGGER).format(poison=sql.Literal(str(poison))))
    beat = datetime.now(UTC) - timedelta(seconds=5)
    stage_all(conn, agents, beat)
    result = flush_in_lanes([conn, lanes[0]])
    assert result.error is None and result.agents_updated == 14 and result.quarantined_agents == 1, result
    assert one(conn, "SELECT count(*) FROM pybatch.quarantine WHERE agent_id = %s", (poison,)) == 1
    assert one(conn, "SELECT count(*) FROM pybatch.pending") == 0


def test_a_failure_of_every_agent_in_lanes_is_systemic_and_keeps_them_pending(
    conn: psycopg.Connection, lanes: list[psycopg.Connection]
) -> None:
    agents = agents_on_pages(conn, (5, 5, 5))
    conn.execute(REJECT_ALL_TRIGGER)
    stage_all(conn, agents, datetime.now(UTC) - timedelta(seconds=5))
    result = flush_in_lanes([conn, *lanes])
    assert result.error is not None and "the app is down" in result.error
    assert one(conn, "SELECT count(*) FROM pybatch.pending") == 15  # nothing lost, nothing quarantined
    assert one(conn, "SELECT count(*) FROM pybatch.quarantine") == 0
    conn.execute("DROP TRIGGER reject_all ON public.workspace_agents")
    assert flush_in_lanes([conn, *lanes]).agents_updated == 15


def test_a_lane_flush_skips_when_another_flush_holds_the_lock(
    dsn: str, conn: psycopg.Connection, lanes: list[psycopg.Connection]
) -> None:
    stage_all(conn, make_agents(conn, 5), datetime.now(UTC) - timedelta(seconds=5))
    with psycopg.connect(dsn) as holder:
        holder.execute("SELECT FROM pybatch.flush_lock FOR UPDATE")
        result = flush_in_lanes([conn, *lanes])
        assert result.skipped and result.error is None
    assert one(conn, "SELECT count(*) FROM pybatch.heartbeats") == 5
    after = flush_in_lanes([conn, *lanes])
    assert after.ok and after.agents_updated == 5
    for session in (conn, *lanes):  # each connection is left as it was found
        assert session.autocommit and session.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_a_flusher_role_flushes_in_lanes_with_its_grant_alone(dsn: str, conn: psycopg.Connection) -> None:
    agents = make_agents(conn, 40)
    stage_all(conn, agents, datetime.now(UTC) - timedelta(seconds=5))
    with login_role(conn, "lane_flusher") as role:
        grant(conn, Grant.FLUSHER, role)
        with as_role(dsn, role) as first, as_role(dsn, role) as second:
            result = flush_in_lanes([first, second])
    assert result.ok and result.agents_updated == 40, result
    assert one(conn, "SELECT count(*) FROM public.workspace_agents WHERE last_connected_at IS NOT NULL") == 40


def test_a_lane_flush_and_a_one_lane_flush_at_once_lose_nothing(
    dsn: str, conn: psycopg.Connection, lanes: list[psycopg.Connection]
) -> None:
    """Two flushers, one in lanes and one not, with writers between: every beat lands."""
    agents = coder_shaped(conn, 400)
    newest = datetime.now(UTC) - timedelta(seconds=60)
    with psycopg.connect(dsn, autocommit=True) as other:
        for i in range(6):
            newest = datetime.now(UTC) - timedelta(seconds=60 - i)
            stage_all(conn, agents, newest)
            result = flush_in_lanes([conn, *lanes]) if i % 2 else flush(other)
            assert result.error is None, result
        while unmerged(conn):
            flush(other)
    assert one(conn, "SELECT count(*) FROM public.workspace_agents WHERE last_connected_at = %s", (newest,)) == 400


def test_a_lane_whose_session_dies_mid_flush_loses_nothing(
    dsn: str, conn: psycopg.Connection, lanes: list[psycopg.Connection]
) -> None:
    """Lane 1's backend is terminated while its pass waits in a trigger: the flush raises, what
    lane 0 merged stays merged, the rest waits in pending, and the next flush merges it."""
    agents = agents_on_pages(conn, (5, 5))
    stuck = agents[7]  # page 1: lane 1's
    conn.execute(
        sql.SQL("""
        CREATE FUNCTION public.wait_for_the_test() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.id = {stuck} THEN PERFORM pg_advisory_xact_lock(4242); END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER wait_for_the_test BEFORE UPDATE ON public.workspace_agents
            FOR EACH ROW EXECUTE FUNCTION public.wait_for_the_test();
    """).format(stuck=sql.Literal(str(stuck)))
    )
    beat = datetime.now(UTC) - timedelta(seconds=5)
    stage_all(conn, agents, beat)
    lane_pid = lanes[0].info.backend_pid
    failure: list[BaseException] = []
    with psycopg.connect(dsn, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(4242)")

        def run() -> None:
            try:
                flush_in_lanes([conn, lanes[0]])
            except BaseException as exc:
                failure.append(exc)

        flusher = threading.Thread(target=run)
        flusher.start()
        wait_until_blocked_by(holder, holder.info.backend_pid)
        holder.execute("SELECT pg_terminate_backend(%s)", (lane_pid,))
        flusher.join(timeout=30)
        assert not flusher.is_alive()
        holder.execute("SELECT pg_advisory_unlock(4242)")
    assert len(failure) == 1 and isinstance(failure[0], PybatchError), failure
    assert conn.autocommit and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert unmerged(conn) > 0  # lane 1's pass was undone with its session
    after = flush(conn)
    assert after.ok, after
    assert unmerged(conn) == 0
    merged = one(
        conn,
        "SELECT count(*) FROM public.workspace_agents WHERE id = ANY (%s) AND last_connected_at = %s",
        (agents, beat),
    )
    assert merged == 10
