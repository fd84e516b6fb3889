"""`pybatch doctor` on a healthy install and on each broken state it claims to detect,
each made for real on a real server."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from pybatch import db, migrate
from pybatch.doctor import (
    FAIL,
    OK,
    WARN,
    Causes,
    Check,
    DoctorReport,
    Thresholds,
    doctor,
    judge_citus_layout,
    judge_hot,
    judge_server_version,
)
from pybatch.flush import flush
from pybatch.local import LocalCluster, temporary_cluster
from pybatch.schedule import cron
from tests.conftest import TEST_SETTINGS
from tests.helpers import connected


def checks(report: DoctorReport) -> dict[str, Check]:
    return {c.name: c for c in report.checks}


@pytest.fixture
def scheduled(dsn: str) -> Iterator[str]:
    """The test database with its pg_cron flush job; the job is removed at teardown (jobs are server-wide).
    5 s, the default: 10 s no longer fits the staleness budget with its margin."""
    connected(dsn, cron.install, 5)
    try:
        yield dsn
    finally:
        connected(dsn, cron.remove)


def add_agents(conn: psycopg.Connection, n: int) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(n)]
    conn.execute("INSERT INTO public.workspace_agents (id) SELECT unnest(%s::uuid[])", (ids,))
    return ids


def beat_and_flush(conn: psycopg.Connection, agents: list[uuid.UUID]) -> None:
    conn.execute("INSERT INTO pybatch.heartbeats (agent_id) SELECT unnest(%s::uuid[])", (agents,))
    result = flush(conn)
    assert result.ok


def test_healthy_install_passes_every_check(scheduled: str) -> None:
    with psycopg.connect(scheduled, autocommit=True) as conn:
        beat_and_flush(conn, add_agents(conn, 3))
    report = connected(scheduled, doctor)
    assert report.ok
    assert {c.name: c.level for c in report.checks} == {c.name: OK for c in report.checks}, report.checks
    assert set(checks(report)) == {
        "server_version",
        "connection",
        "migrations",
        "compatibility",
        "routines",
        "merge_owner",
        "target_table",
        "citus_layout",
        "pg_cron_preload",
        "pg_cron_extension",
        "cron_job",
        "job_run_details",
        "flushes",
        "staleness_budget",
        "staging_growth",
        "pending_and_quarantine",
        "table_shape",
        "hot_updates",
        "table_growth",
    }
    assert "pybatch-flush-" in checks(report)["cron_job"].message
    assert checks(report)["connection"].message.endswith("a primary, connected directly")
    assert checks(report)["citus_layout"].message.startswith("plain PostgreSQL (no citus extension)")


def _sessions(observer: psycopg.Connection, databases: list[str]) -> dict[str, int]:
    """Sessions ever opened to each database (pg_stat_database.sessions, PostgreSQL 14+)."""
    rows = observer.execute(
        "SELECT datname, sessions FROM pg_catalog.pg_stat_database WHERE datname = ANY(%s)", (databases,)
    ).fetchall()
    return {str(name): int(count) for name, count in rows}


def _sessions_after(observer: psycopg.Connection, before: dict[str, int], expected: dict[str, int]) -> dict[str, int]:
    """The sessions opened since `before`, once the expected ones are counted (a closed session's
    count reaches pg_stat_database when its backend exits) and a little longer for any other."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        now = _sessions(observer, list(before))
        if all(now[name] - before[name] >= count for name, count in expected.items()):
            break
        time.sleep(0.05)
    time.sleep(1.5)  # longer than the 1 s a backend may hold its statistics back
    now = _sessions(observer, list(before))
    return {name: now[name] - before[name] for name in before}


def test_doctor_runs_on_the_callers_connection(conn: psycopg.Connection, pg_cluster: LocalCluster) -> None:
    """Regression: doctor opened about 5 connections (one per migrate and cron call). Now it runs on
    the caller's, plus one to pg_cron's database only where that is another database (here
    `postgres`, the test cluster's cron.database_name); in pg_cron's own database, none."""
    app = str(conn.info.dbname)
    assert conn.execute("SELECT current_setting('cron.database_name')").fetchone() == ("postgres",)
    version = conn.execute("SELECT current_setting('server_version_num')::int").fetchone()
    assert version is not None and version[0] >= 140000  # pg_stat_database.sessions is there
    with psycopg.connect(pg_cluster.url("postgres"), autocommit=True) as cron_db:
        cron_db.execute("CREATE EXTENSION IF NOT EXISTS pg_cron")  # so the cron checks run in full
        databases = [app, "postgres"]
        # The counter moves here: one session derived from the caller's is counted once.
        before = _sessions(conn, databases)
        with db.connect_like(conn, dbname="postgres") as probe:
            probe.execute("SELECT 1")
        assert _sessions_after(conn, before, {"postgres": 1}) == {app: 0, "postgres": 1}

        before = _sessions(conn, databases)
        report = checks(doctor(conn))
        assert report["pg_cron_extension"].level == OK and "in database postgres" in report["pg_cron_extension"].message
        assert "no pg_cron job" in report["cron_job"].message  # cron.status ran, on doctor's pg_cron connection
        assert _sessions_after(conn, before, {"postgres": 1}) == {app: 0, "postgres": 1}
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE and conn.autocommit

        # Run in pg_cron's own database, doctor opens no session at all.
        before = _sessions(conn, databases)
        in_cron_db = checks(doctor(cron_db))
        assert in_cron_db["pg_cron_extension"].level == OK
        assert in_cron_db["job_run_details"].level == OK  # read on the caller's connection
        assert _sessions_after(conn, before, {}) == {app: 0, "postgres": 0}


def test_no_job_and_no_flushes_fails_and_says_how_to_schedule(dsn: str) -> None:
    report = connected(dsn, doctor)
    assert not report.ok
    job = checks(report)["cron_job"]
    assert job.level == FAIL and "pybatch cron install" in job.message and "pybatch scheduler" in job.message
    assert checks(report)["flushes"].level == FAIL
    # Flushes from another scheduler (here: by hand) make a missing pg_cron job fine.
    with psycopg.connect(dsn, autocommit=True) as conn:
        flush(conn)
    assert checks(connected(dsn, doctor))["cron_job"].level == OK


def test_pending_migration_is_reported(empty_dsn: str) -> None:
    connected(empty_dsn, migrate.apply)
    rolled_back = connected(empty_dsn, migrate.rollback)
    report = connected(empty_dsn, doctor)
    check = checks(report)["migrations"]
    assert check.level == FAIL and str(rolled_back) in check.message and "pybatch migrate" in check.message


def test_migration_unknown_to_this_client_is_incompatible(conn: psycopg.Connection, dsn: str) -> None:
    conn.execute(
        "INSERT INTO pybatch_migrations._yoyo_migration (migration_hash, migration_id, applied_at_utc) "
        "VALUES ('f00d', '9999_from_a_newer_pybatch', now())"
    )
    check = checks(doctor(conn))["compatibility"]
    assert check.level == FAIL and "9999_from_a_newer_pybatch" in check.message and "upgrade" in check.message


def test_target_table_missing_a_column(conn: psycopg.Connection, dsn: str) -> None:
    conn.execute("ALTER TABLE public.workspace_agents DROP COLUMN last_connected_replica_id")
    check = checks(doctor(conn))["target_table"]
    assert check.level == FAIL and "last_connected_replica_id" in check.message


def test_staging_growing_without_flushes(conn: psycopg.Connection, dsn: str) -> None:
    agents = add_agents(conn, 2)
    conn.execute(
        "INSERT INTO pybatch.heartbeats (agent_id, beat_at) SELECT unnest(%s::uuid[]), now() - interval '2 minutes'",
        (agents,),
    )
    check = checks(doctor(conn))["staging_growth"]
    assert check.level == FAIL and "2 heartbeats" in check.message and "pybatch flush" in check.message
    flush(conn)
    assert checks(doctor(conn))["staging_growth"].level == OK


def test_staging_beyond_one_flush_warns(conn: psycopg.Connection, dsn: str) -> None:
    agents = add_agents(conn, 3)
    conn.execute("UPDATE pybatch.settings SET max_rows_per_flush = 2")
    conn.execute("INSERT INTO pybatch.heartbeats (agent_id) SELECT unnest(%s::uuid[])", (agents,))
    check = checks(doctor(conn))["staging_growth"]
    assert check.level == WARN and "max_rows_per_flush 2" in check.message
    flush(conn)
    flush(conn)
    assert checks(doctor(conn))["staging_growth"].level == OK


def test_flushes_late_warn_and_stalled_fail(conn: psycopg.Connection, dsn: str) -> None:
    conn.execute("UPDATE pybatch.settings SET flush_interval = '10 seconds'")  # 30 s ago: 3 intervals
    conn.execute(
        "INSERT INTO pybatch.flush_log (started_at, duration, completed_at)"
        " VALUES (now() - interval '30 seconds', '0', now() - interval '30 seconds')"
    )
    assert checks(doctor(conn))["flushes"].level == WARN
    conn.execute("UPDATE pybatch.settings SET flush_interval = '2 seconds'")
    assert checks(doctor(conn))["flushes"].level == FAIL


def test_low_hot_ratio_names_the_index_and_never_asks_for_a_rewrite(conn: psycopg.Connection, dsn: str) -> None:
    # An index on a column the merge writes makes every update non-HOT, at any fillfactor.
    # (Before 0005 doctor advised fillfactor 70 and VACUUM FULL; committed passes need neither.)
    conn.execute("CREATE INDEX wa_last_connected_idx ON public.workspace_agents (last_connected_at)")
    conn.execute("ALTER TABLE public.workspace_agents SET (fillfactor = 100)")
    agents = add_agents(conn, 300)
    for _ in range(4):
        beat_and_flush(conn, agents)
    report = checks(doctor(conn))
    check = report["hot_updates"]
    assert check.level == WARN, check
    assert "0% of 1200 merge updates over the last 4 flushes" in check.message
    assert "last_connected_at" in check.message and "drop them" in check.message
    assert "fillfactor = 70" not in check.message and "no fillfactor change or VACUUM FULL is needed" in check.message
    shape = report["table_shape"]
    assert shape.level == WARN and "fillfactor 100" in shape.message and "last_connected_at" in shape.message


def measured_merge(conn: psycopg.Connection, dsn: str, rounds: int, one_transaction: bool) -> dict[str, Check]:
    """A Coder-like table at fillfactor 100 (packed full, as a real one is), 2000 agents, `rounds`
    flushes of every agent; through the default path or SELECT pybatch.flush() in one transaction."""
    conn.execute("ALTER TABLE public.workspace_agents SET (fillfactor = 100)")
    agents = add_agents(conn, 2000)
    conn.execute("VACUUM FULL public.workspace_agents")  # packed: no room left on any page
    for _ in range(rounds):
        conn.execute("INSERT INTO pybatch.heartbeats (agent_id) SELECT unnest(%s::uuid[])", (agents,))
        if one_transaction:
            with conn.transaction():
                conn.execute("SELECT pybatch.flush()")
        else:
            assert flush(conn).ok
    return checks(doctor(conn, Thresholds(recent_flushes=rounds - 1)))  # the warm-up round left out


def test_committed_passes_stay_hot_at_fillfactor_100(conn: psycopg.Connection, dsn: str) -> None:
    report = measured_merge(conn, dsn, rounds=6, one_transaction=False)
    hot = report["hot_updates"]
    assert hot.level == OK and "fillfactor 100" in hot.message, hot
    ratio = int(hot.message.split("%")[0])
    assert ratio >= 95, hot
    assert report["table_growth"].level == OK, report["table_growth"]


def test_one_transaction_flushes_are_named_as_the_cause_of_low_hot(conn: psycopg.Connection, dsn: str) -> None:
    report = measured_merge(conn, dsn, rounds=4, one_transaction=True)
    hot = report["hot_updates"]
    assert hot.level == WARN, hot
    assert "SELECT pybatch.flush() in one transaction" in hot.message and "VACUUM FULL is needed" in hot.message


def test_old_cron_job_running_select_flush_is_reported(scheduled: str) -> None:
    with psycopg.connect(scheduled, autocommit=True) as conn:
        beat_and_flush(conn, add_agents(conn, 3))
        job = cron.flush_job_name(conn.info.dbname)
    with psycopg.connect(make_conninfo(scheduled, dbname="postgres"), autocommit=True) as cron_conn:
        # As pg_cron 1.5+ jobs of earlier pybatch versions were: a seconds schedule, one transaction.
        cron_conn.execute(
            "UPDATE cron.job SET command = 'SELECT pybatch.flush()', schedule = '5 seconds' WHERE jobname = %s", (job,)
        )
    check = checks(connected(scheduled, doctor))["cron_job"]
    assert check.level == WARN and "pybatch cron install" in check.message and "SELECT pybatch.flush()" in check.message


def test_heap_growth_across_flushes_warns(conn: psycopg.Connection, dsn: str) -> None:
    conn.execute(
        "INSERT INTO pybatch.flush_log (started_at, duration, heap_bytes, index_bytes, completed_at) VALUES "
        "(now() - interval '20 seconds', '0', 1000000, 500000, now() - interval '20 seconds'),"
        " (now(), '0', 2000000, 510000, now())"
    )
    check = checks(doctor(conn))["table_growth"]
    assert check.level == WARN and "+100%" in check.message and "the heap grew over 10%" in check.message
    # Index growth of 2 % is within bounds; a doubling is named too.
    conn.execute("UPDATE pybatch.flush_log SET index_bytes = 1020000 WHERE index_bytes = 510000")
    check = checks(doctor(conn))["table_growth"]
    assert "the heap and indexes grew over 10%" in check.message
    assert "VACUUM FULL is not needed" in check.message


def test_staleness_budget_warns_when_tight_and_fails_when_broken(conn: psycopg.Connection, dsn: str) -> None:
    """Issue 11 #10: `config set flush_interval 25s` was accepted and doctor said nothing."""
    assert checks(doctor(conn))["staleness_budget"].level == OK
    conn.execute("UPDATE pybatch.settings SET flush_interval = '10 seconds'")
    tight = checks(doctor(conn))["staleness_budget"]
    assert tight.level == WARN and "tight" in tight.message and "at most 7.0 s" in tight.message
    conn.execute("UPDATE pybatch.settings SET flush_interval = '25 seconds'")
    broken = checks(doctor(conn))["staleness_budget"]
    assert broken.level == FAIL and "over inactive_timeout 30.0 s" in broken.message
    conn.execute("UPDATE pybatch.settings SET flush_interval = '5 seconds', heartbeat_period = '25 seconds'")
    assert checks(doctor(conn))["staleness_budget"].level == FAIL


def test_quarantined_and_deferred_agents_are_shown(conn: psycopg.Connection, dsn: str) -> None:
    """Issue 11 #9: status and doctor show the quarantine."""
    good, poison, locked = add_agents(conn, 3)
    conn.execute(
        "CREATE FUNCTION public.refuse_one() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"IF NEW.id = '{poison}' THEN RAISE EXCEPTION 'poison row'; END IF; RETURN NEW; END $$"
    )
    conn.execute(
        "CREATE TRIGGER refuse_one BEFORE UPDATE ON public.workspace_agents "
        "FOR EACH ROW EXECUTE FUNCTION public.refuse_one()"
    )
    conn.execute(
        "INSERT INTO pybatch.heartbeats (agent_id, beat_at) SELECT unnest(%s::uuid[]), now() - interval '30 seconds'",
        ([good, poison, locked],),
    )
    with psycopg.connect(dsn) as app:
        app.execute("SELECT FROM public.workspace_agents WHERE id = %s FOR UPDATE", (locked,))
        result = flush(conn)
        assert (result.quarantined_agents, result.deferred_agents) == (1, 1), result
        check = checks(doctor(conn))["pending_and_quarantine"]
        assert check.level == WARN
        assert "1 agent(s) quarantined (1 heartbeats kept)" in check.message and str(poison) in check.message
        assert "poison row" in check.message and "pybatch.requeue_quarantined()" in check.message
        assert "1 deferred because their row was locked" in check.message and "waiting" in check.message
        app.rollback()


def test_judges_without_a_server() -> None:
    assert judge_server_version(120012, "12.12", 130000).level == FAIL
    assert judge_server_version(150018, "15.18", 130000).level == OK
    limits = Thresholds()
    assert judge_hot(10, 0, 1, 100, Causes(), limits).level == OK  # too few updates to judge
    assert judge_hot(10_000, 9_600, 20, 100, Causes(), limits).level == OK  # fillfactor 100 is fine
    low = judge_hot(10_000, 1_000, 20, 70, Causes(), limits)
    assert low.level == WARN and "autovacuum" in low.message and "flush_in_passes" in low.message
    held = judge_hot(10_000, 1_000, 20, 100, Causes(old_snapshot="pid 7 has held a snapshot for 90s"), limits)
    assert held.level == WARN and "pid 7" in held.message and "autovacuum" not in held.message


def test_judge_citus_layout_without_a_server() -> None:
    ours = {
        "pybatch.heartbeats": ("h", "agent_id", 3),
        "pybatch.pending": ("h", "agent_id", 3),
        "pybatch.quarantine": ("h", "agent_id", 3),
    }
    good = judge_citus_layout({"public.workspace_agents": ("h", "id", 3), **ours}, (8, 2))
    assert good.level == OK and "8 shard groups on 2 node(s)" in good.message
    by_time = judge_citus_layout({"public.workspace_agents": ("h", "created_at", 3), **ours}, (8, 2))
    assert by_time.level == FAIL and "distributed by created_at" in by_time.message
    reference = judge_citus_layout({"public.workspace_agents": ("n", None, 4), **ours}, (8, 2))
    assert reference.level == FAIL and "reference or Citus local table" in reference.message
    by_replica = {**ours, "pybatch.heartbeats": ("h", "replica_id", 3)}
    wrong = judge_citus_layout({"public.workspace_agents": ("h", "id", 3), **by_replica}, (8, 2))
    assert wrong.level == FAIL and "pybatch.heartbeats is distributed by replica_id" in wrong.message
    local_target = judge_citus_layout({"public.workspace_agents": (None, None, None), **ours}, (8, 2))
    assert local_target.level == FAIL and "is a local table but" in local_target.message


@pytest.fixture
def cluster_without_pg_cron() -> Iterator[LocalCluster]:
    with temporary_cluster({**TEST_SETTINGS, "shared_preload_libraries": "''"}, prefix="pybatch-nocron-") as cluster:
        connected(cluster.url(), migrate.apply)
        yield cluster


def test_pg_cron_not_preloaded(cluster_without_pg_cron: LocalCluster) -> None:
    report = checks(connected(cluster_without_pg_cron.url(), doctor))
    assert report["pg_cron_preload"].level == WARN
    assert "shared_preload_libraries" in report["pg_cron_preload"].message
    assert report["cron_job"].level == FAIL and "pybatch scheduler" in report["cron_job"].message


def test_pg_cron_extension_missing_then_job_run_details_too_big(own_cluster: LocalCluster) -> None:
    report = checks(connected(own_cluster.url(), doctor))
    assert report["pg_cron_preload"].level == OK
    extension = report["pg_cron_extension"]
    assert extension.level == WARN and "CREATE EXTENSION pg_cron" in extension.message
    with psycopg.connect(own_cluster.url("postgres"), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION pg_cron")
        conn.execute(
            "INSERT INTO cron.job_run_details (jobid, runid, job_pid, database, username, command, status,"
            " return_message, start_time, end_time) SELECT 1, g, 0, 'pybatch', 'postgres', 'SELECT 1',"
            " 'succeeded', '1 row', now(), now() FROM generate_series(1, 50) g"
        )
        version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'").fetchone()
    assert version is not None
    report = checks(connected(own_cluster.url(), doctor, Thresholds(job_run_details_max_rows=40)))
    assert report["pg_cron_extension"].level == OK
    assert f"pg_cron {version[0]} in database postgres" in report["pg_cron_extension"].message
    assert (
        report["job_run_details"].level == WARN
        and "DELETE FROM cron.job_run_details" in report["job_run_details"].message
    )
    assert (
        checks(connected(own_cluster.url(), doctor, Thresholds(job_run_details_max_rows=60)))["job_run_details"].level
        == OK
    )


@pytest.mark.slow
def test_failing_cron_job_is_reported(scheduled: str) -> None:
    """A real failed run: the procedure the job calls is gone (pg_cron 1.4's loop, or 1.5+'s
    flush_in_passes), so pg_cron's next run fails (the next minute on 1.4, within 5 s on 1.5+)."""
    job = connected(scheduled, cron.installed_job)
    assert job is not None
    procedure = "flush_loop" if "flush_loop" in job.command else "flush_in_passes"
    with psycopg.connect(scheduled, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER PROCEDURE {} RENAME TO {}").format(
                sql.Identifier("pybatch", procedure), sql.Identifier(f"{procedure}_gone")
            )
        )
        with conn.transaction():
            flush(conn)  # flushes arrive otherwise (one transaction: no procedure): only the job is broken
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        state = connected(scheduled, cron.status)
        if any(run.status == "failed" for run in state.runs):
            break
        time.sleep(2)
    check = checks(connected(scheduled, doctor))["cron_job"]
    assert check.level == FAIL and procedure in check.message, check


def test_a_reader_gets_skips_naming_the_grant_never_a_failure_or_a_wrong_conclusion(
    dsn: str, conn: psycopg.Connection
) -> None:
    """Issue 19: the reader role ran doctor and got 6 FAILs, then 'pg_cron is not available'.
    What it may not read is a SKIP naming the grant; nothing is concluded from it."""
    from pybatch.doctor import SKIP
    from pybatch.grants import Grant, grant
    from tests.integration.roles import login_role

    agents = [uuid.uuid4() for _ in range(3)]
    conn.execute("INSERT INTO public.workspace_agents (id) SELECT unnest(%s::uuid[])", (agents,))
    conn.execute("INSERT INTO pybatch.heartbeats (agent_id) SELECT unnest(%s::uuid[])", (agents,))
    assert flush(conn).agents_updated == 3  # a recent flush: `flushes` has nothing to fail on
    with login_role(conn, "reader") as reader:
        grant(conn, Grant.READER, reader)
        with psycopg.connect(make_conninfo(dsn, user=reader), autocommit=True) as as_reader:
            report = checks(doctor(as_reader))
    failed = {name: c.message for name, c in report.items() if c.level == FAIL}
    assert failed == {}, failed
    skipped = {name: c.message for name, c in report.items() if c.level == SKIP}
    assert {"migrations", "routines", "table_shape"} <= set(skipped), report
    for message in skipped.values():
        assert "GRANT" in message, message
    assert "not available" not in report["cron_job"].message
