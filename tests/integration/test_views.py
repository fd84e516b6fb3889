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

from pybatch import inspect
from pybatch.flush import flush
from pybatch.local import SUPERUSER, LocalCluster, find_bindir
from tests.conftest import TEST_SETTINGS

VIEWS = ("staging_summary", "flush_history", "agent_status", "health")


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
    agent = add_agent(conn, first_connected_at="now() - interval '1 hour'",
                      last_connected_at="now() - interval '5 seconds'")
    assert status_of(conn, agent) == ("connected", False)


def test_agent_disconnected_by_a_disconnect_at_or_after_the_last_heartbeat(conn: psycopg.Connection) -> None:
    tie = add_agent(conn, first_connected_at="now() - interval '1 minute'",
                    last_connected_at="now() - interval '5 seconds'",
                    disconnected_at="now() - interval '5 seconds'")
    later = add_agent(conn, first_connected_at="now() - interval '1 minute'",
                      last_connected_at="now() - interval '5 seconds'",
                      disconnected_at="now() - interval '1 second'")
    earlier = add_agent(conn, first_connected_at="now() - interval '1 minute'",
                        last_connected_at="now() - interval '5 seconds'",
                        disconnected_at="now() - interval '6 seconds'")
    assert status_of(conn, tie)[0] == "disconnected"
    assert status_of(conn, later)[0] == "disconnected"
    assert status_of(conn, earlier)[0] == "connected"  # a heartbeat after the disconnect reconnects


def test_agent_disconnected_after_the_inactive_timeout(conn: psycopg.Connection) -> None:
    agent = add_agent(conn, first_connected_at="now() - interval '1 hour'",
                      last_connected_at="now() - interval '31 seconds'")
    assert status_of(conn, agent)[0] == "disconnected"
    # The rule reads settings.inactive_timeout, not a constant.
    conn.execute("UPDATE pybatch.settings SET inactive_timeout = '1 minute'")
    assert status_of(conn, agent)[0] == "connected"


def test_newer_heartbeat_waiting_in_staging_is_shown(conn: psycopg.Connection) -> None:
    waiting = add_agent(conn, first_connected_at="now() - interval '1 hour'",
                        last_connected_at="now() - interval '40 seconds'")
    old_only = add_agent(conn, first_connected_at="now() - interval '1 hour'",
                         last_connected_at="now() - interval '5 seconds'")
    conn.execute("INSERT INTO pybatch.heartbeats (agent_id, beat_at) VALUES "
                 "(%s, now() - interval '2 seconds'), (%s, now() - interval '10 seconds')", (waiting, old_only))
    assert status_of(conn, waiting) == ("disconnected", True)
    assert status_of(conn, old_only) == ("connected", False)
    row = conn.execute("SELECT staged_beat_at IS NOT NULL FROM pybatch.agent_status WHERE agent_id = %s",
                       (waiting,)).fetchone()
    assert row == (True,)
    flush(conn)
    assert status_of(conn, waiting) == ("connected", False)


# -- health: one crafted flush history per state --------------------------------------------
def log_flush(conn: psycopg.Connection, ago: str, error: str | None = None) -> None:
    conn.execute(
        "INSERT INTO pybatch.flush_log (started_at, duration, error) "
        "VALUES (now() - %s::interval, interval '10 milliseconds', %s)", (ago, error),
    )


def test_health_never_flushed_is_stalled(conn: psycopg.Connection) -> None:
    health = inspect.health(conn)
    assert health.status == "stalled" and health.last_success_at is None
    assert "no successful flush" in health.reason


def test_health_ok_after_a_real_flush(conn: psycopg.Connection) -> None:
    flush(conn)
    health = inspect.health(conn)
    assert health.status == "ok" and health.ok
    assert health.flush_interval == timedelta(seconds=10)
    assert health.last_success_age is not None and health.last_success_age < timedelta(seconds=20)


def test_health_late_within_five_intervals(conn: psycopg.Connection) -> None:
    log_flush(conn, "30 seconds")  # 3 intervals of 10 s
    health = inspect.health(conn)
    assert health.status == "late"
    assert "over 2 flush intervals" in health.reason


def test_health_stalled_beyond_five_intervals(conn: psycopg.Connection) -> None:
    log_flush(conn, "60 seconds")
    assert inspect.health(conn).status == "stalled"
    # The yardstick is settings.flush_interval.
    conn.execute("UPDATE pybatch.settings SET flush_interval = '1 minute'")
    assert inspect.health(conn).status == "ok"


def test_health_reason_names_the_failure_after_the_last_success(conn: psycopg.Connection) -> None:
    log_flush(conn, "2 minutes")
    log_flush(conn, "1 second", error="XX000: disk on fire")
    health = inspect.health(conn)
    assert health.status == "stalled"
    assert health.last_error == "XX000: disk on fire"
    assert "disk on fire" in health.reason


# -- flush_history ----------------------------------------------------------------------------
def test_flush_history_newest_first_with_counts_and_errors(conn: psycopg.Connection) -> None:
    agent = add_agent(conn)
    conn.execute("INSERT INTO pybatch.heartbeats (agent_id) VALUES (%s), (%s), (%s)",
                 (agent, agent, uuid.uuid4()))
    first = flush(conn)
    # A real failure: a trigger on the target makes the next flush roll back.
    conn.execute("CREATE FUNCTION public.refuse() RETURNS trigger LANGUAGE plpgsql AS "
                 "$$ BEGIN RAISE EXCEPTION 'refused by test'; END $$")
    conn.execute("CREATE TRIGGER refuse BEFORE UPDATE ON public.workspace_agents "
                 "FOR EACH ROW EXECUTE FUNCTION public.refuse()")
    conn.execute("INSERT INTO pybatch.heartbeats (agent_id) VALUES (%s)", (agent,))
    second = flush(conn)
    assert second.error is not None
    history = inspect.recent_flushes(conn)
    assert [h.flush_id for h in history] == [second.flush_id, first.flush_id]
    failed, ok = history
    assert not failed.succeeded and failed.error is not None and "refused by test" in failed.error
    assert ok.succeeded and ok.error is None
    assert (ok.rows_staged, ok.agents_updated, ok.unknown_heartbeats) == (3, 1, 1)
    assert ok.finished_at == ok.started_at + ok.duration


# -- staging_summary --------------------------------------------------------------------------
def test_staging_summary_exact_when_small(conn: psycopg.Connection) -> None:
    empty = inspect.staging(conn)
    assert empty.available and not empty.estimated and empty.rows_staged == 0 and empty.oldest_beat_at is None
    a, b = uuid.uuid4(), uuid.uuid4()
    conn.execute("INSERT INTO pybatch.heartbeats (agent_id, beat_at) VALUES "
                 "(%s, now() - interval '20 seconds'), (%s, now() - interval '10 seconds'), "
                 "(%s, now() - interval '3 seconds')", (a, a, b))
    summary = inspect.staging(conn)
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
    summary = inspect.staging(conn)
    assert summary.estimated is True and summary.method is not None and "sample" in summary.method
    assert summary.rows_staged is not None and summary.distinct_agents is not None
    assert 0.7 * rows < summary.rows_staged < 1.3 * rows
    assert 0.7 * agents < summary.distinct_agents < 1.3 * agents
    assert summary.oldest_beat_age is not None and summary.newest_beat_age is not None
    assert summary.oldest_beat_age > summary.newest_beat_age


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
            capture_output=True, text=True, check=False,
        )
        assert psql.returncode == 0, psql.stderr
        for heading in ("== health", "== staging", "== last 10 flushes", "== agents by status", "== settings"):
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
        "AND p.proname IN ('staging_stats', 'staged_latest_beats') AND obj_description(p.oid, 'pg_proc') IS NULL"
    ).fetchall()
    assert missing == []
    views = {r[0] for r in conn.execute(
        "SELECT relname FROM pg_class WHERE relnamespace = 'pybatch'::regnamespace AND relkind = 'v'").fetchall()}
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
        [*runner, str(find_bindir() / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(own_cluster.port),
         "-U", SUPERUSER, "-D", str(replica.datadir), "-R", "-X", "stream", "-c", "fast"],
        check=True, capture_output=True, cwd="/",
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
        assert inspect.in_recovery(conn)
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            conn.execute("SELECT count(*) FROM pybatch.heartbeats")  # what the views must avoid
        state = inspect.status(conn)
        assert state.in_recovery
        assert not state.staging.available and state.staging.reason and "standby" in state.staging.reason
        assert state.staging.rows_staged is None and state.staging.size_bytes is None
        assert state.health.status == "ok"  # flush_log is replicated
        assert state.agents.by_status["connected"] == 1
        assert state.agents.newer_heartbeat_staged is None
        assert status_of(conn, agent) == ("connected", None)
