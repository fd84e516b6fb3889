"""The inspection views of migration 0003 on crafted states: every agent status,
every health state, staging (exact and estimated), flush history, pg_monitor
access, and a real hot standby."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from pybatch import settings, status, status_document
from pybatch.errors import ConfigError, InvalidSetting
from pybatch.flush import flush
from pybatch.local import SUPERUSER, LocalCluster, find_bindir
from tests.conftest import TEST_SETTINGS

VIEWS = ("staging_summary", "flush_history", "agent_status", "health", "staleness")


def add_agent(conn: psycopg.Connection, **columns: object) -> uuid.UUID:
    """Insert an agent whose connection columns are set by SQL expressions relative to now()."""
    agent = uuid.uuid4()
    names = sql.SQL(", ").join(sql.Identifier(name) for name in ["id", *columns])
    values = sql.SQL(", ").join([sql.Placeholder(), *(sql.SQL(str(v)) for v in columns.values())])
    conn.execute(sql.SQL("INSERT INTO public.workspace_agents ({}) VALUES ({})").format(names, values), (agent,))
    return agent


def status_of(conn: psycopg.Connection, agent: uuid.UUID) -> tuple[str, bool | None]:
    row = conn.execute(
        "SELECT status, newer_heartbeat_staged FROM pybatch.agent_status WHERE agent_id = %s", (agent,)
    ).fetchone()
    assert row is not None
    return row[0], row[1]


# -- agent_status: Coder's rules, one crafted agent per outcome ----------------------------
def test_agent_connecting_without_timeout(conn: psycopg.Connection) -> None:
    agent = add_agent(conn, created_at="now() - interval '1 hour'", connection_timeout_seconds=0)
    assert status_of(conn, agent) == ("connecting", False)


def test_agent_connecting_within_its_timeout(conn: psycopg.Connection) -> None:
    agent = add_agent(conn, created_at="now() - interval '5 seconds'", connection_timeout_seconds=60)
    assert status_of(conn, agent)[0] == "connecting"


def test_agent_timeout_when_never_connected_past_its_timeout(conn: psycopg.Connection) -> None:
    agent = add_agent(conn, created_at="now() - interval '61 seconds'", connection_timeout_seconds=60)
    assert status_of(conn, agent)[0] == "timeout"


def test_agent_connected_with_a_recent_heartbeat(conn: psycopg.Connection) -> None:
    agent = add_agent(
        conn, first_connected_at="now() - interval '1 hour'", last_connected_at="now() - interval '5 seconds'"
    )
    assert status_of(conn, agent) == ("connected", False)


def test_agent_disconnected_by_a_disconnect_at_or_after_the_last_heartbeat(conn: psycopg.Connection) -> None:
    tie = add_agent(
        conn,
        first_connected_at="now() - interval '1 minute'",
        last_connected_at="now() - interval '5 seconds'",
        disconnected_at="now() - interval '5 seconds'",
    )
    later = add_agent(
        conn,
        first_connected_at="now() - interval '1 minute'",
        last_connected_at="now() - interval '5 seconds'",
        disconnected_at="now() - interval '1 second'",
    )
    earlier = add_agent(
        conn,
        first_connected_at="now() - interval '1 minute'",
        last_connected_at="now() - interval '5 seconds'",
        disconnected_at="now() - interval '6 seconds'",
    )
    assert status_of(conn, tie)[0] == "disconnected"
    assert status_of(conn, later)[0] == "disconnected"
    assert status_of(conn, earlier)[0] == "connected"  # a heartbeat after the disconnect reconnects


def test_agent_disconnected_after_the_inactive_timeout(conn: psycopg.Connection) -> None:
    agent = add_agent(
        conn, first_connected_at="now() - interval '1 hour'", last_connected_at="now() - interval '31 seconds'"
    )
    assert status_of(conn, agent)[0] == "disconnected"
    # The rule reads settings.inactive_timeout, not a constant.
    conn.execute("UPDATE pybatch.settings SET inactive_timeout = '1 minute'")
    assert status_of(conn, agent)[0] == "connected"


def test_newer_heartbeat_waiting_in_staging_is_shown(conn: psycopg.Connection) -> None:
    waiting = add_agent(
        conn, first_connected_at="now() - interval '1 hour'", last_connected_at="now() - interval '40 seconds'"
    )
    old_only = add_agent(
        conn, first_connected_at="now() - interval '1 hour'", last_connected_at="now() - interval '5 seconds'"
    )
    conn.execute(
        "INSERT INTO pybatch.heartbeats (agent_id, beat_at) VALUES "
        "(%s, now() - interval '2 seconds'), (%s, now() - interval '10 seconds')",
        (waiting, old_only),
    )
    assert status_of(conn, waiting) == ("disconnected", True)
    assert status_of(conn, old_only) == ("connected", False)
    row = conn.execute(
        "SELECT staged_beat_at IS NOT NULL FROM pybatch.agent_status WHERE agent_id = %s", (waiting,)
    ).fetchone()
    assert row == (True,)
    flush(conn)
    assert status_of(conn, waiting) == ("connected", False)


# -- health: one crafted flush history per state --------------------------------------------
def log_flush(conn: psycopg.Connection, ago: str, error: str | None = None) -> None:
    conn.execute(
        "INSERT INTO pybatch.flush_log (started_at, duration, error, completed_at) "
        "VALUES (now() - %s::interval, interval '10 milliseconds', %s, now() - %s::interval)",
        (ago, error, ago),
    )


def test_health_never_flushed_is_stalled(conn: psycopg.Connection) -> None:
    health = status.health(conn)
    assert health.status == "stalled" and health.last_success_at is None
    assert "no successful flush" in health.reason


def test_health_ok_after_a_real_flush(conn: psycopg.Connection) -> None:
    flush(conn)
    health = status.health(conn)
    assert health.status == "ok" and health.ok
    assert health.flush_interval == timedelta(seconds=5)  # the default since 0004 (Coder's batcher: 5 s)
    assert health.last_success_age is not None and health.last_success_age < timedelta(seconds=20)


def test_health_late_within_five_intervals(conn: psycopg.Connection) -> None:
    conn.execute("UPDATE pybatch.settings SET flush_interval = '10 seconds'")
    log_flush(conn, "30 seconds")  # 3 intervals of 10 s
    health = status.health(conn)
    assert health.status == "late"
    assert "over 2 flush intervals" in health.reason


def test_health_stalled_beyond_five_intervals(conn: psycopg.Connection) -> None:
    conn.execute("UPDATE pybatch.settings SET flush_interval = '10 seconds'")
    log_flush(conn, "60 seconds")
    assert status.health(conn).status == "stalled"
    # The yardstick is settings.flush_interval.
    conn.execute("UPDATE pybatch.settings SET flush_interval = '1 minute'")
    assert status.health(conn).status == "ok"


def test_health_reason_names_the_failure_after_the_last_success(conn: psycopg.Connection) -> None:
    log_flush(conn, "2 minutes")
    log_flush(conn, "1 second", error="XX000: disk on fire")
    health = status.health(conn)
    assert health.status == "stalled"
    assert health.last_error == "XX000: disk on fire"
    assert "disk on fire" in health.reason


# -- flush_history ----------------------------------------------------------------------------
def test_flush_history_newest_first_with_counts_and_errors(conn: psycopg.Connection) -> None:
    agent = add_agent(conn)
    conn.execute("INSERT INTO pybatch.heartbeats (agent_id) VALUES (%s), (%s), (%s)", (agent, agent, uuid.uuid4()))
    first = flush(conn)
    # A real failure: a trigger on the target makes the next flush roll back.
    conn.execute(
        "CREATE FUNCTION public.refuse() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'refused by test'; END $$"
    )
    conn.execute(
        "CREATE TRIGGER refuse BEFORE UPDATE ON public.workspace_agents FOR EACH ROW EXECUTE FUNCTION public.refuse()"
    )
    conn.execute("INSERT INTO pybatch.heartbeats (agent_id) VALUES (%s)", (agent,))
    second = flush(conn)
    assert second.error is not None
    history = status.recent_flushes(conn)
    assert [h.flush_id for h in history] == [second.flush_id, first.flush_id]
    failed, ok = history
    assert not failed.succeeded and failed.error is not None and "refused by test" in failed.error
    assert ok.succeeded and ok.error is None
    assert (ok.rows_staged, ok.agents_updated, ok.unknown_heartbeats) == (3, 1, 1)
    assert ok.finished_at == ok.started_at + ok.duration


# -- staging_summary --------------------------------------------------------------------------
def test_staging_summary_exact_when_small(conn: psycopg.Connection) -> None:
    empty = status.staging(conn)
    assert empty.available and not empty.estimated and empty.rows_staged == 0 and empty.oldest_beat_at is None
    a, b = uuid.uuid4(), uuid.uuid4()
    conn.execute(
        "INSERT INTO pybatch.heartbeats (agent_id, beat_at) VALUES "
        "(%s, now() - interval '20 seconds'), (%s, now() - interval '10 seconds'), "
        "(%s, now() - interval '3 seconds')",
        (a, a, b),
    )
    summary = status.staging(conn)
    assert summary.method == "exact" and summary.estimated is False
    assert (summary.rows_staged, summary.distinct_agents) == (3, 2)
    assert summary.oldest_beat_age is not None and summary.newest_beat_age is not None
    assert timedelta(seconds=19) < summary.oldest_beat_age < timedelta(seconds=40)
    assert timedelta(seconds=2) < summary.newest_beat_age < summary.oldest_beat_age
    assert summary.size_bytes is not None and summary.size_bytes > 0


def test_staging_summary_estimates_when_large(conn: psycopg.Connection) -> None:
    rows, agents = 300_000, 5_000
    conn.execute(
        "INSERT INTO pybatch.heartbeats (agent_id, beat_at) "
        "SELECT ('00000000-0000-0000-0000-' || lpad(to_hex(g %% %s), 12, '0'))::uuid, "
        "now() - (%s - g) * interval '1 millisecond' FROM generate_series(1, %s) g",
        (agents, rows, rows),
    )
    summary = status.staging(conn)
    assert summary.estimated is True and summary.method is not None and "sample" in summary.method
    assert summary.rows_staged is not None and summary.distinct_agents is not None
    assert 0.7 * rows < summary.rows_staged < 1.3 * rows
    assert 0.7 * agents < summary.distinct_agents < 1.3 * agents
    assert summary.oldest_beat_age is not None and summary.newest_beat_age is not None
    assert summary.oldest_beat_age > summary.newest_beat_age


# -- migration 0005: staleness budget, behind, flush lock, pending and quarantine, table shape ----
def test_staleness_budget_adds_the_parts_and_judges_them(conn: psycopg.Connection) -> None:
    budget = settings.staleness_budget(conn)
    # Defaults: Coder's 15 s period + the client's 1 s write interval + a 5 s flush + 1 s assumed
    # for a flush never measured = 22 s, within 30 s with the 6 s margin.
    assert (budget.heartbeat_period, budget.client_write_interval, budget.flush_interval) == (
        timedelta(seconds=15),
        timedelta(seconds=1),
        timedelta(seconds=5),
    )
    assert not budget.flush_duration_measured and budget.flush_duration == timedelta(seconds=1)
    assert budget.worst_staleness == timedelta(seconds=22) and budget.margin == timedelta(seconds=6)
    assert (budget.verdict, budget.allowed) == ("ok", True)
    assert budget.max_flush_interval == timedelta(seconds=7)
    # Coder's own findings: a 10 s flush reached 25.7 s (tight), a 15 s flush broke (exceeds).
    tight = settings.staleness_budget(conn, flush_interval=timedelta(seconds=10))
    assert (tight.verdict, tight.allowed) == ("tight", True) and "at most 7.0 s" in tight.reason
    broken = settings.staleness_budget(conn, flush_interval=timedelta(seconds=15))
    assert (broken.verdict, broken.allowed) == ("exceeds", False)
    assert "over inactive_timeout 30.0 s" in broken.reason
    with pytest.raises(InvalidSetting, match=r"flush_interval.*25s.*staleness budget"):
        settings.require_staleness_budget(conn, "flush_interval", timedelta(seconds=25))
    assert settings.require_staleness_budget(conn, "flush_interval", timedelta(seconds=5)).verdict == "ok"
    # Any part counts: a 30 s heartbeat period alone breaks it; a longer timeout makes room.
    assert not settings.staleness_budget(conn, heartbeat_period=timedelta(seconds=30)).allowed
    assert (
        settings.staleness_budget(
            conn, flush_interval=timedelta(seconds=15), inactive_timeout=timedelta(minutes=1)
        ).verdict
        == "ok"
    )
    # The flush's own duration is measured once flushes are logged: the longest of the last 20.
    conn.execute(
        "INSERT INTO pybatch.flush_log (started_at, duration, completed_at) VALUES "
        "(now() - interval '1 minute', interval '4 seconds', now() - interval '56 seconds'),"
        " (now(), interval '200 milliseconds', now())"
    )
    measured = settings.staleness_budget(conn)
    assert measured.flush_duration_measured and measured.flush_duration == timedelta(seconds=4)
    assert (measured.worst_staleness, measured.verdict) == (timedelta(seconds=25), "tight")
    # Stored settings are what it judges by default; SQL callers get the same row.
    conn.execute("UPDATE pybatch.settings SET heartbeat_period = '5 seconds', client_write_interval = '0'")
    row = conn.execute("SELECT worst_staleness, verdict, allowed FROM pybatch.staleness_budget()").fetchone()
    assert row == (timedelta(seconds=14), "ok", True)
    row = conn.execute("SELECT allowed FROM pybatch.staleness_budget(new_flush_interval => '25 seconds')").fetchone()
    assert row == (False,)


def test_budget_settings_have_range_checks(conn: psycopg.Connection) -> None:
    for statement in (
        "UPDATE pybatch.settings SET heartbeat_period = '0'",
        "UPDATE pybatch.settings SET heartbeat_period = '2 hours'",
        "UPDATE pybatch.settings SET client_write_interval = '-1 second'",
        "UPDATE pybatch.settings SET client_write_interval = '2 hours'",
    ):
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(statement)
    conn.execute("UPDATE pybatch.settings SET heartbeat_period = '1 hour', client_write_interval = '0'")
    stored = settings.read_settings(conn)
    assert (stored.heartbeat_period, stored.client_write_interval) == (timedelta(hours=1), timedelta(0))


def test_health_behind_when_a_capped_flush_leaves_a_cap_of_backlog(conn: psycopg.Connection) -> None:
    """Issue 11 #12b: before 0005 this state reported ok."""
    agents = [add_agent(conn) for _ in range(5)]
    conn.execute("UPDATE pybatch.settings SET max_rows_per_flush = 2")
    conn.execute("INSERT INTO pybatch.heartbeats (agent_id) SELECT unnest(%s::uuid[])", (agents,))
    assert flush(conn).rows_staged == 2  # 3 left, more than the next flush drains
    health = status.health(conn)
    assert (health.status, health.behind, health.ok) == ("behind", True, False)
    assert "max_rows_per_flush" in health.reason and "cap of 2" in health.reason
    assert flush(conn).rows_staged == 2  # 1 left: the next flush takes it all
    health = status.health(conn)
    assert (health.status, health.behind) == ("ok", False)


def test_deferred_pending_rows_show_in_views_and_make_health_behind(conn: psycopg.Connection, dsn: str) -> None:
    locked, free = add_agent(conn), add_agent(conn)
    conn.execute(
        "INSERT INTO pybatch.heartbeats (agent_id, beat_at) SELECT unnest(%s::uuid[]), now() - interval '1 minute'",
        ([locked, free],),
    )
    with psycopg.connect(dsn) as app:  # an app transaction holds one agent's row
        app.execute("SELECT FROM public.workspace_agents WHERE id = %s FOR UPDATE", (locked,))
        result = flush(conn)
        assert result.ok and result.deferred_agents == 1
        summary = status.staging(conn)
        assert (summary.rows_staged, summary.pending_agents, summary.pending_beats, summary.deferred_agents) == (
            0,
            1,
            1,
            1,
        )
        assert summary.oldest_pending_age is not None and summary.oldest_pending_age > timedelta(seconds=50)
        # The deferred beat is newer than the row: "newer heartbeat staged", though staging is empty.
        assert status_of(conn, locked) == ("connecting", True)  # never merged yet
        assert status_of(conn, free) == ("disconnected", False)  # merged: a minute old
        row = conn.execute(
            "SELECT staged_beat_at, pending_beat_at IS NOT NULL FROM pybatch.agent_status WHERE agent_id = %s",
            (locked,),
        ).fetchone()
        assert row == (None, True)
        health = status.health(conn)
        assert health.status == "behind" and "pybatch.pending" in health.reason, health
        counts = status.agent_counts(conn)
        assert counts.newer_heartbeat_staged == 1
        app.rollback()
    assert flush(conn).agents_updated == 1
    assert status.staging(conn).pending_agents == 0
    assert status.health(conn).status == "ok"


def test_health_names_who_holds_the_flush_lock(conn: psycopg.Connection, dsn: str) -> None:
    """Issue 11 #3: a skipped flush is visible, with the holder."""
    conn.execute("UPDATE pybatch.settings SET flush_interval = '10 seconds'")
    log_flush(conn, "30 seconds")
    assert status.health(conn).flush_lock_held_by is None
    with psycopg.connect(dsn, application_name="long-app-txn") as holder:
        holder.execute("SELECT pybatch.flush()")  # holds pybatch.flush_lock until it commits
        pid = holder.info.backend_pid
        skipped = flush(conn)
        assert skipped.skipped
        health = status.health(conn)
        assert health.status == "late"
        assert health.flush_lock_held_by is not None and f"pid {pid}" in health.flush_lock_held_by
        assert "long-app-txn" in health.flush_lock_held_by
        assert f"flushes are skipped: pybatch.flush_lock is held by pid {pid}" in health.reason
        holder.rollback()
    assert status.health(conn).flush_lock_held_by is None


def test_health_measures_the_worst_staleness(conn: psycopg.Connection) -> None:
    assert status.health(conn).worst_staleness is None  # nothing measured yet
    # Three flushes: a beat staged just after the first started waited until the second
    # finished, 10 s + 2 s = 12 s; the latest window is 9.5 s.
    conn.execute(
        "INSERT INTO pybatch.flush_log (started_at, duration, completed_at) VALUES "
        "(now() - interval '20 seconds', interval '1 second', now() - interval '19 seconds'), "
        "(now() - interval '10 seconds', interval '2 seconds', now() - interval '8 seconds'), "
        "(now() - interval '1 second', interval '500 milliseconds', now() - interval '500 milliseconds')"
    )
    health = status.health(conn)
    assert health.max_beat_wait == timedelta(seconds=12)
    assert health.worst_staleness == timedelta(seconds=15 + 1 + 12)  # + heartbeat period + write interval
    # Failed flushes merge nothing: they do not end a wait.
    conn.execute(
        "INSERT INTO pybatch.flush_log (started_at, duration, error, completed_at) VALUES "
        "(now() - interval '15 seconds', interval '1 second', 'XX000: boom', now() - interval '14 seconds')"
    )
    assert status.health(conn).max_beat_wait == timedelta(seconds=12)


def test_quarantine_shows_in_staging_summary_and_agent_status(conn: psycopg.Connection) -> None:
    good = add_agent(conn)  # first on the page: merged in pass 1, so the poison fails alone in pass 2
    poison = add_agent(conn)
    conn.execute(
        "CREATE FUNCTION public.refuse_one() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"IF NEW.id = '{poison}' THEN RAISE EXCEPTION 'poison row'; END IF; RETURN NEW; END $$"
    )
    conn.execute(
        "CREATE TRIGGER refuse_one BEFORE UPDATE ON public.workspace_agents "
        "FOR EACH ROW EXECUTE FUNCTION public.refuse_one()"
    )
    conn.execute("INSERT INTO pybatch.heartbeats (agent_id) SELECT unnest(%s::uuid[])", ([poison, good],))
    result = flush(conn)
    assert result.quarantined_agents == 1 and result.agents_updated == 1
    summary = status.staging(conn)
    assert (summary.quarantined_agents, summary.quarantined_beats, summary.quarantine_sample_agent) == (1, 1, poison)
    assert summary.quarantine_sample_error is not None and "poison row" in summary.quarantine_sample_error
    assert summary.oldest_quarantined_at is not None and summary.quarantine_next_retry_at is not None
    row = conn.execute(
        "SELECT quarantine_error, quarantined_beat_at IS NOT NULL FROM pybatch.agent_status WHERE agent_id = %s",
        (poison,),
    ).fetchone()
    assert row is not None and "poison row" in row[0] and row[1]
    row = conn.execute("SELECT quarantine_error FROM pybatch.agent_status WHERE agent_id = %s", (good,)).fetchone()
    assert row == (None,)
    document = status_document.as_json(status.status(conn))
    assert document["quarantine"]["agents"] == 1 and document["quarantine"]["sample_agent"] == str(poison)
    assert "poison row" in document["quarantine"]["sample_error"]
    assert document["pending"] == {
        "agents": 0,
        "beats": 0,
        "deferred_agents": 0,
        "oldest_beat_at": None,
        "oldest_beat_age_seconds": None,
    }
    flushed = document["recent_flushes"][0]
    assert (flushed["quarantined_agents"], flushed["agents_updated"]) == (1, 1)
    assert flushed["heap_bytes"] > 0 and flushed["passes"] >= 1
    assert document["staleness"]["verdict"] == "ok" and document["staleness"]["allowed"] is True
    assert document["health"]["worst_staleness_seconds"] is not None
    assert document["settings"]["heartbeat_period_seconds"] == 15.0


def test_table_shape_measures_fillfactor_rows_per_page_and_unused_space(conn: psycopg.Connection) -> None:
    conn.execute("ALTER TABLE public.workspace_agents SET (fillfactor = 100)")
    conn.execute("INSERT INTO public.workspace_agents (id) SELECT gen_random_uuid() FROM generate_series(1, 3000)")
    full = status.table_shape(conn)
    assert full.fillfactor == 100 and full.live_rows == 3000 and full.method.startswith("exact")
    assert full.heap_pages == full.heap_bytes // 8192 and full.sampled_pages == full.heap_pages
    assert full.rows_per_page is not None and full.avg_row_bytes is not None and full.unused_percent is not None
    assert abs(float(full.rows_per_page) - 3000 / full.heap_pages) < 0.1
    assert full.unused_percent < 15  # packed full
    assert full.indexed_flushed_columns == [] and full.index_count >= 1
    # The same rows at fillfactor 50 (rewritten, for the test): about half of each page unused.
    conn.execute("ALTER TABLE public.workspace_agents SET (fillfactor = 50)")
    conn.execute("VACUUM FULL public.workspace_agents")
    half = status.table_shape(conn)
    assert half.fillfactor == 50 and half.live_rows == 3000
    assert half.rows_per_page is not None and half.unused_percent is not None
    assert float(half.rows_per_page) < 0.6 * float(full.rows_per_page)
    assert 40 < half.unused_percent < 65
    # Large tables are sampled; an index on a column the merge writes is named.
    conn.execute("CREATE INDEX wa_updated_idx ON public.workspace_agents (updated_at)")
    sampled = status.table_shape(conn, max_pages=2)
    assert sampled.method.startswith("estimate") and sampled.indexed_flushed_columns == ["updated_at"]
    with pytest.raises(ConfigError):
        status.table_shape(conn, max_pages=0)


# -- access and documentation -----------------------------------------------------------------
def test_pg_monitor_reads_every_view_and_runs_inspect_sql(conn: psycopg.Connection, dsn: str) -> None:
    role = f"monitor_{uuid.uuid4().hex[:8]}"
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE pg_monitor").format(sql.Identifier(role)))
    try:
        conn.execute("INSERT INTO pybatch.heartbeats (agent_id) VALUES (%s)", (add_agent(conn),))
        flush(conn)
        script = Path(__file__).resolve().parents[2] / "sql" / "inspect.sql"
        psql = subprocess.run(
            ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-d", make_conninfo(dsn, user=role), "-f", str(script)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert psql.returncode == 0, psql.stderr
        for heading in (
            "== health",
            "== staleness budget",
            "== staging",
            "== pending",
            "== last 10 flushes",
            "== agents by status",
            "== settings",
        ):
            assert heading in psql.stdout
        assert "| ok " in psql.stdout and "connected" in psql.stdout
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        for view in VIEWS:
            conn.execute(sql.SQL("SELECT * FROM pybatch.{}").format(sql.Identifier(view))).fetchall()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM pybatch.heartbeats")
    finally:
        conn.execute("RESET ROLE")
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_every_view_column_and_function_is_commented(conn: psycopg.Connection) -> None:
    missing = conn.execute(
        "SELECT c.relname || coalesce('.' || a.attname, '') FROM pg_class c "
        "LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 "
        "WHERE c.relnamespace = 'pybatch'::regnamespace AND c.relkind = 'v' "
        "AND col_description(c.oid, coalesce(a.attnum, 0)) IS NULL AND (a.attnum IS NOT NULL "
        "OR obj_description(c.oid, 'pg_class') IS NULL) "
        "UNION ALL SELECT p.proname FROM pg_proc p WHERE p.pronamespace = 'pybatch'::regnamespace "
        "AND p.proname IN ('staging_stats', 'staged_latest_beats', 'pending_stats', 'pending_latest_beats', "
        "'backlog_verdict', 'staleness_budget', 'table_shape', 'seconds_text') "
        "AND obj_description(p.oid, 'pg_proc') IS NULL"
    ).fetchall()
    assert missing == []
    views = {
        r[0]
        for r in conn.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = 'pybatch'::regnamespace AND relkind = 'v'"
        ).fetchall()
    }
    assert set(VIEWS) <= views


# -- a real hot standby -----------------------------------------------------------------------
@pytest.fixture
def standby(own_cluster: LocalCluster) -> Iterator[tuple[LocalCluster, LocalCluster]]:
    """A streaming standby of own_cluster, made with pg_basebackup -R as the server user."""
    home = Path(tempfile.mkdtemp(prefix="pybatch-standby-", dir=os.environ.get("PYBATCH_TEST_TMP", "/tmp")))
    os.chmod(home, 0o755)
    replica = LocalCluster(home / "cluster", settings=TEST_SETTINGS)
    replica.home.mkdir()
    user = replica.server_user
    if user is not None:
        shutil.chown(replica.home, user, user)
    runner = ["runuser", "-u", user, "--"] if user else []
    subprocess.run(
        [
            *runner,
            str(find_bindir() / "pg_basebackup"),
            "-h",
            "127.0.0.1",
            "-p",
            str(own_cluster.port),
            "-U",
            SUPERUSER,
            "-D",
            str(replica.datadir),
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
        ],
        check=True,
        capture_output=True,
        cwd="/",
    )
    with socket.socket() as sock:  # a free port for the standby
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    (replica.home / "port").write_text(f"{port}\n")
    with (replica.datadir / "postgresql.auto.conf").open("a") as conf:
        conf.write(f"port = {port}\nunix_socket_directories = '{replica.home}'\ncron.host = '{replica.home}'\n")
    try:
        try:
            replica.start()
        except Exception:
            print(replica.logfile.read_text(errors="replace"))
            raise
        yield own_cluster, replica
    finally:
        replica.destroy()
        shutil.rmtree(home, ignore_errors=True)


def test_views_answer_on_a_hot_standby(standby: tuple[LocalCluster, LocalCluster]) -> None:
    primary, replica = standby
    with psycopg.connect(primary.url(), autocommit=True) as conn:
        agent = add_agent(conn, first_connected_at="now()", last_connected_at="now()")
        conn.execute("INSERT INTO pybatch.heartbeats (agent_id) VALUES (%s)", (agent,))
        flush(conn)
        lsn = conn.execute("SELECT pg_current_wal_lsn()").fetchone()
    with psycopg.connect(replica.url(), autocommit=True) as conn:
        for _ in range(300):  # wait until the standby has replayed the flush
            row = conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", lsn).fetchone()
            if row and row[0]:
                break
            conn.execute("SELECT pg_sleep(0.1)")
        assert status.in_recovery(conn)
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            conn.execute("SELECT count(*) FROM pybatch.heartbeats")  # what the views must avoid
        state = status.status(conn)
        assert state.in_recovery
        assert not state.staging.available and state.staging.reason and "standby" in state.staging.reason
        assert state.staging.rows_staged is None and state.staging.size_bytes is None
        assert state.health.status == "ok"  # flush_log is replicated
        assert state.agents.by_status["connected"] == 1
        assert state.agents.newer_heartbeat_staged is None
        assert status_of(conn, agent) == ("connected", None)
