"""pg_cron scheduling against a real server: the flush loop, install/remove/status, clear errors,
and pg_cron itself moving heartbeats (slow: pg_cron 1.4 ticks once a minute).

Jobs are server-wide and outlive a dropped test database, so every test that installs
one removes it at teardown (the `cleanup` fixture). Job names carry the test database
name, which is unique per test.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from pytest_postgresql.janitor import DatabaseJanitor

from pybatch import migrate
from pybatch.errors import CronError
from pybatch.local import SUPERUSER, LocalCluster, temporary_cluster
from pybatch.schedule import cron
from tests.conftest import TEMPLATE_DB, TEST_SETTINGS
from tests.helpers import connected, last_connected, make_agents, stage

Cleanup = Callable[[str], None]


@pytest.fixture
def cleanup() -> Iterator[Cleanup]:
    """Register a DSN whose pybatch jobs must be removed at teardown."""
    dsns: list[str] = []
    yield dsns.append
    for dsn in dsns:
        connected(dsn, cron.remove)


def flush_starts(conn: psycopg.Connection) -> list[datetime]:
    return [row[0] for row in conn.execute("SELECT started_at FROM pybatch.flush_log ORDER BY id").fetchall()]


def gaps(starts: list[datetime]) -> list[float]:
    return [(b - a).total_seconds() for a, b in itertools.pairwise(starts)]


def cron_conn(dsn: str) -> psycopg.Connection:
    return psycopg.connect(psycopg.conninfo.make_conninfo(dsn, dbname="postgres"), autocommit=True)


def jobs_named(dsn: str, database: str) -> list[tuple[int, str, str, str]]:
    with cron_conn(dsn) as conn:
        return conn.execute(
            "SELECT jobid, jobname, schedule, command FROM cron.job WHERE jobname LIKE %s ORDER BY jobname",
            (f"pybatch-%-{database}",),
        ).fetchall()


def dbname(conn: psycopg.Connection) -> str:
    row = conn.execute("SELECT current_database()").fetchone()
    assert row is not None
    return str(row[0])


# -- the loop procedure, called directly ---------------------------------------------------------


def test_flush_loop_flushes_every_interval_until_stop_at(conn: psycopg.Connection) -> None:
    agents = make_agents(conn, 3)
    at = datetime.now(UTC) - timedelta(seconds=1)
    stage(conn, agents, at)
    conn.execute("CALL pybatch.flush_loop('1 second', clock_timestamp() + interval '3.5 seconds')")
    starts = flush_starts(conn)
    measured = gaps(starts)
    print(f"flush_loop gaps at 1 s: {[round(g, 3) for g in measured]}")
    assert len(starts) == 4  # at 0, 1, 2, 3 s; 4 s is past stop_at
    assert all(0.9 <= g <= 2.0 for g in measured)  # interval + 1 s at most
    assert set(last_connected(conn, agents).values()) == {at}
    row = conn.execute("SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()").fetchone()
    assert row == (cron.LOOP_APPLICATION_NAME,)


def test_flush_loop_merges_beats_that_arrive_while_it_runs(dsn: str, conn: psycopg.Connection) -> None:
    """Regression: each pass's transaction starts before its sleep, so a future check against
    now() would call every beat of the last sleep 'future' and drop it."""
    agents = make_agents(conn, 4)
    conn.execute("UPDATE pybatch.settings SET future_tolerance = '0'")
    beats: list[datetime] = []

    def writer() -> None:
        with psycopg.connect(dsn, autocommit=True) as writer_conn:
            for agent in agents:
                time.sleep(0.6)
                row = writer_conn.execute(
                    "INSERT INTO pybatch.heartbeats (agent_id) VALUES (%s) RETURNING beat_at", (agent,)
                ).fetchone()
                assert row is not None
                beats.append(row[0])

    thread = threading.Thread(target=writer)
    thread.start()
    conn.execute("CALL pybatch.flush_loop('1 second', clock_timestamp() + interval '3.5 seconds')")
    thread.join()
    conn.execute("CALL pybatch.flush_loop('1 second', clock_timestamp())")  # one more pass for the last beat
    row = conn.execute("SELECT sum(future_heartbeats), sum(agents_updated) FROM pybatch.flush_log").fetchone()
    assert row == (0, 4)
    assert sorted(last_connected(conn, agents).values()) == sorted(beats)  # type: ignore[type-var]


def test_flush_loop_goes_on_after_failing_passes(conn: psycopg.Connection) -> None:
    """Flush 1: the merge fails (nothing merges, so it is kept pending and logged as failed).
    Flush 2: the merge works but writing its flush_log row (at its hand-off) fails; the loop records
    that and goes on.
    Flush 3: everything works. The heartbeat arrives, and the loop never stopped."""
    (agent,) = make_agents(conn, 1)
    at = datetime.now(UTC) - timedelta(seconds=1)
    stage(conn, [agent], at)
    conn.execute("""
        CREATE SEQUENCE public.fail_log; CREATE SEQUENCE public.fail_merge;
        CREATE FUNCTION public.fail_log() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            -- Each flush writes one row at its hand-off: the second flush's is refused once.
            IF NEW.error IS NULL AND nextval('public.fail_log') = 2 THEN
                RAISE EXCEPTION 'injected flush_log failure';
            END IF;
            RETURN NEW;
        END $$;
        CREATE FUNCTION public.fail_merge() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            -- Calls 1 and 2: flush 1's pass and its one-agent retry.
            IF nextval('public.fail_merge') <= 2 THEN RAISE EXCEPTION 'injected merge failure'; END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER fail_log BEFORE INSERT ON pybatch.flush_log FOR EACH ROW EXECUTE FUNCTION public.fail_log();
        CREATE TRIGGER fail_merge BEFORE UPDATE ON public.workspace_agents
            FOR EACH ROW EXECUTE FUNCTION public.fail_merge();
    """)
    conn.execute("CALL pybatch.flush_loop('1 second', clock_timestamp() + interval '2.5 seconds')")
    errors = [row[0] for row in conn.execute("SELECT error FROM pybatch.flush_log ORDER BY id").fetchall()]
    assert len(errors) == 3, errors
    assert errors[0] is not None and "injected merge failure" in errors[0]
    assert errors[1] is not None and errors[1].startswith("flush_log: P0001: injected flush_log failure")
    assert errors[2] is None
    assert last_connected(conn, [agent]) == {agent: at}


def test_flush_loop_drains_again_at_once_when_the_row_cap_is_hit(conn: psycopg.Connection) -> None:
    agents = make_agents(conn, 25)
    stage(conn, agents, datetime.now(UTC) - timedelta(seconds=1))
    conn.execute("UPDATE pybatch.settings SET max_rows_per_flush = 10")
    conn.execute("CALL pybatch.flush_loop('30 seconds', clock_timestamp() + interval '1 second')")
    rows = conn.execute("SELECT rows_staged, started_at FROM pybatch.flush_log ORDER BY id").fetchall()
    assert [r[0] for r in rows] == [10, 10, 5]
    assert (rows[-1][1] - rows[0][1]).total_seconds() < 1  # no 30 s wait between capped drains


# -- install, status, remove --------------------------------------------------------------------


def test_install_twice_updates_the_job_and_stores_the_interval(
    conn: psycopg.Connection, dsn: str, cleanup: Cleanup
) -> None:
    cleanup(dsn)
    database = dbname(conn)
    # Slow agents (a 2-minute timeout), so 20 s flushes fit the staleness budget.
    conn.execute("UPDATE pybatch.settings SET inactive_timeout = '2 minutes'")
    first = cron.install(conn, 10, force_loop=True)
    second = cron.install(conn, 20, force_loop=True)
    assert first.jobid == second.jobid
    assert (second.name, second.mode, second.database) == (f"pybatch-flush-{database}", "loop", database)
    jobs = jobs_named(dsn, database)
    assert [(j[1], j[3]) for j in jobs] == [
        (f"pybatch-flush-{database}", "CALL pybatch.flush_loop('20 seconds')"),
        (f"pybatch-purge-{database}", cron.purge_command(database, conn)),
    ]
    assert conn.execute("SELECT flush_interval FROM pybatch.settings").fetchone() == (timedelta(seconds=20),)

    state = cron.status(conn)
    assert state.job == second and state.purge_job is not None and state.error is None
    assert state.configured_interval == 20
    assert state.last_flush_age is None  # nothing has flushed yet
    conn.execute("SELECT pybatch.flush()")
    age = cron.status(conn).last_flush_age
    assert age is not None and 0 <= age < 60

    assert cron.remove(conn) == 2
    assert jobs_named(dsn, database) == []
    assert cron.remove(conn) == 0


def test_purge_job_command_deletes_only_old_pybatch_rows(conn: psycopg.Connection, dsn: str, cleanup: Cleanup) -> None:
    cleanup(dsn)
    database = dbname(conn)
    job = cron.install(conn, 10, force_loop=True)
    with cron_conn(dsn) as cc:
        other = cc.execute("SELECT cron.schedule(%s, '0 0 1 1 *', 'SELECT 1')", (f"other-{database}",)).fetchone()
        assert other is not None
        try:
            old, recent = datetime.now(UTC) - timedelta(days=2), datetime.now(UTC) - timedelta(hours=1)
            for jobid, when in ((job.jobid, old), (job.jobid, recent), (other[0], old)):
                cc.execute(
                    "INSERT INTO cron.job_run_details (jobid, runid, database, username, command, status,"
                    " start_time, end_time) VALUES (%s, nextval('cron.runid_seq'), %s, 'postgres',"
                    " 'x', 'succeeded', %s, %s)",
                    (jobid, database, when, when),
                )
            cc.execute(cron.purge_command(database, cc))
            left = cc.execute(
                "SELECT jobid, end_time FROM cron.job_run_details WHERE jobid = ANY(%s) ORDER BY jobid, end_time",
                ([job.jobid, other[0]],),
            ).fetchall()
            assert left == sorted([(job.jobid, recent), (other[0], old)])
        finally:
            cc.execute("DELETE FROM cron.job_run_details WHERE jobid = %s", (other[0],))
            cc.execute("SELECT cron.unschedule(%s::bigint)", (other[0],))


def test_seconds_schedule_where_pg_cron_has_it(conn: psycopg.Connection, dsn: str, cleanup: Cleanup) -> None:
    """pg_cron >= 1.5 gets a 'N seconds' job; older pg_cron gets the loop, and really rejects seconds."""
    cleanup(dsn)
    with cron_conn(dsn) as cc:
        cc.execute("CREATE EXTENSION IF NOT EXISTS pg_cron")
        row = cc.execute("SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'").fetchone()
        assert row is not None
        version = cron.parse_version(row[0])
        job = cron.install(conn, 5)
        if version >= (1, 5):
            assert (job.mode, job.schedule, job.command) == ("seconds", "5 seconds", "CALL pybatch.flush_in_passes()")
        else:
            assert job.mode == "loop"
            with pytest.raises(psycopg.errors.InvalidParameterValue, match="invalid schedule"):
                cc.execute("SELECT cron.schedule(%s, '5 seconds', 'SELECT 1')", (f"probe-{dbname(conn)}",))


def test_remove_ends_a_running_loop(dsn: str, pg_cluster: LocalCluster) -> None:
    outcome: list[BaseException | None] = []

    def run_loop() -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as loop_conn:
                loop_conn.execute("CALL pybatch.flush_loop('1 second', clock_timestamp() + interval '60 seconds')")
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run_loop)
    thread.start()
    with psycopg.connect(dsn, autocommit=True) as conn:
        deadline = time.monotonic() + 10

        def loop_sessions() -> int:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND datname = current_database()",
                (cron.LOOP_APPLICATION_NAME,),
            ).fetchone()
            assert row is not None
            return int(row[0])

        while not loop_sessions():
            assert time.monotonic() < deadline, "the loop never started"
            time.sleep(0.05)
        started = time.monotonic()
        assert connected(dsn, cron.remove) == 0  # no job was installed; the loop ends all the same
        thread.join(timeout=10)
        assert not thread.is_alive()
        assert time.monotonic() - started < 10
        loops = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND (application_name = %s OR query LIKE 'CALL pybatch.flush_loop%%')"
            " AND pid <> pg_backend_pid()",
            (cron.LOOP_APPLICATION_NAME,),
        ).fetchone()
        assert loops == (0,)  # nothing left that would block DROP DATABASE
    assert isinstance(outcome[0], psycopg.OperationalError)


# -- clear errors on a private cluster ------------------------------------------------------------


def test_errors_name_the_problem_and_the_scheduler() -> None:
    """One private cluster walks through: pg_cron not preloaded, extension not created (and the role
    may not create it), then no privilege on schema cron. remove() stays a quiet no-op throughout."""
    settings = {**TEST_SETTINGS, "shared_preload_libraries": "''"}
    with temporary_cluster(settings, prefix="pybatch-cron-") as cluster:
        admin = cluster.url()
        connected(admin, migrate.apply)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("CREATE ROLE alice LOGIN")
            conn.execute("GRANT USAGE ON SCHEMA pybatch TO alice")
            conn.execute("GRANT SELECT, UPDATE ON pybatch.settings TO alice")
            conn.execute("GRANT SELECT ON pybatch.flush_log TO alice")
            conn.execute("GRANT EXECUTE ON PROCEDURE pybatch.flush_loop(interval, timestamptz) TO alice")
        alice = psycopg.conninfo.make_conninfo(admin, user="alice")

        with pytest.raises(CronError, match="not in shared_preload_libraries") as err:
            connected(admin, cron.install, 10)
        assert_actionable(err.value)
        assert connected(admin, cron.remove) == 0

        with psycopg.connect(cluster.url("postgres"), autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_cron'")
        cluster.stop()
        cluster.start()

        for action in (
            lambda: connected(alice, cron.install, 10, force_loop=True),
            lambda: connected(alice, cron.status),
        ):
            with pytest.raises(CronError, match="CREATE EXTENSION pg_cron") as err:
                action()
            assert_actionable(err.value)
        assert connected(alice, cron.remove) == 0

        job = connected(admin, cron.install, 10, force_loop=True)  # a superuser may create the extension
        assert job.mode == "loop"
        for action in (
            lambda: connected(alice, cron.install, 10, force_loop=True),
            lambda: connected(alice, cron.status),
        ):
            with pytest.raises(CronError, match="no privilege on schema cron") as err:
                action()
            assert "GRANT USAGE ON SCHEMA cron TO alice" in str(err.value)
            assert_actionable(err.value)
        assert connected(alice, cron.remove) == 0
        assert connected(admin, cron.remove) == 2


def assert_actionable(error: CronError) -> None:
    text = str(error)
    assert "\n" not in text
    assert text.endswith("or run `pybatch scheduler`")


# -- pg_cron itself runs the job (slow: 1.4 ticks once a minute) ----------------------------------------


@contextlib.contextmanager
def rejected_by_pg_hba(cluster: LocalCluster, database: str) -> Iterator[None]:
    """pg_cron connects over cron.host (the socket directory here); reject that route for one database."""
    hba = cluster.datadir / "pg_hba.conf"
    original = hba.read_text()
    hba.write_text(f"local {database} all reject\n{original}")
    admin = psycopg.conninfo.make_conninfo(cluster.url("postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("SELECT pg_reload_conf()")
    try:
        yield
    finally:
        hba.write_text(original)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("SELECT pg_reload_conf()")


@contextlib.contextmanager
def extra_database(cluster: LocalCluster) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:16]}"
    janitor = DatabaseJanitor(
        user=SUPERUSER, host="127.0.0.1", port=cluster.port, dbname=name, template_dbname=TEMPLATE_DB
    )
    janitor.init()
    try:
        yield psycopg.conninfo.make_conninfo(cluster.url(name))
    finally:
        connected(cluster.url(name), cron.remove)
        janitor.drop()


@pytest.mark.slow
def test_pg_cron_moves_heartbeats_and_status_reports_a_refused_connection(
    conn: psycopg.Connection,
    dsn: str,
    pg_cluster: LocalCluster,
    cleanup: Cleanup,
) -> None:
    cleanup(dsn)
    agents = make_agents(conn, 50)
    at = datetime.now(UTC) - timedelta(seconds=1)
    stage(conn, agents, at)
    with extra_database(pg_cluster) as refused_dsn:
        refused_db = psycopg.conninfo.conninfo_to_dict(refused_dsn)["dbname"]
        assert isinstance(refused_db, str)
        with rejected_by_pg_hba(pg_cluster, refused_db):
            cron.install(conn, 2, force_loop=True)
            connected(refused_dsn, cron.install, 2, force_loop=True)
            deadline = time.monotonic() + 90
            while set(last_connected(conn, agents).values()) != {at}:
                assert time.monotonic() < deadline, "pg_cron never flushed"
                time.sleep(0.5)
            state = cron.status(conn)
            while not [r for r in connected(refused_dsn, cron.status).runs if r.status == "failed"]:
                assert time.monotonic() < deadline, "pg_cron never tried the refused database"
                time.sleep(0.5)
            refused = connected(refused_dsn, cron.status)
        time.sleep(4.5)  # let the loop run a few more passes, to measure its gaps
        measured = gaps(flush_starts(conn))
    print(f"pg_cron loop gaps at 2 s: {[round(g, 3) for g in measured]}")
    assert conn.execute("SELECT count(*) FROM pybatch.heartbeats").fetchone() == (0,)
    assert state.error is None
    assert state.runs and state.runs[0].status in ("running", "succeeded")
    assert state.last_flush_age is not None and state.last_flush_age < 5
    assert measured and max(measured) <= 3.0  # interval + 1 s
    assert refused.error is not None
    assert "pg_hba.conf" in str(refused.error) and refused_db in str(refused.error)
    assert_actionable(refused.error)
