"""A database owner who is not superuser, as on a managed service (RDS, Cloud SQL, Azure).

The owner has no superuser, with or without pg_read_all_settings and CREATEROLE. An
administrator installed pg_cron in its database (cron.database_name, `postgres` here) and
granted the owner USAGE ON SCHEMA cron and EXECUTE on cron.schedule_in_database (pg_cron
1.4+ revokes that from PUBLIC). Every command works, or refuses in one line naming the grant.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from psycopg import sql

from pybatch.local import LocalCluster, temporary_cluster
from pybatch.schedule import cron
from tests.conftest import TEST_SETTINGS, run_pybatch

SCHEDULE = sql.SQL("cron.schedule_in_database(text,text,text,text,text,boolean)")


@dataclass(frozen=True)
class Owner:
    role: str
    dsn: str
    app_role: str  # an existing role to grant to


def ok(*args: str) -> str:
    result = run_pybatch(*args)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "unexpected error" not in result.stderr, result.stderr
    return result.stdout


def one_line_error(*args: str) -> str:
    result = run_pybatch(*args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0 and len(lines) == 1, (args, result.stdout, result.stderr)
    assert lines[0].startswith("pybatch: error: "), lines
    return lines[0]


def doctor_checks(dsn: str) -> dict[str, str]:
    result = run_pybatch("--dsn", dsn, "doctor")
    assert "Traceback" not in result.stderr and "unexpected error" not in result.stderr, result.stderr
    found = {}
    for line in result.stdout.splitlines():
        level, _, rest = line.partition(" ")
        name, _, message = rest.strip().partition(": ")
        found[name] = f"{level} {message}"
    return found


def make_owner(cluster: LocalCluster, *, read_settings: bool, createrole: bool, cron_usage: bool) -> Owner:
    """A LOGIN role (NOSUPERUSER) owning a new database, granted what the flags say."""
    role = f"owner_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(cluster.conninfo("postgres"), autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER {}").format(
                sql.Identifier(role), sql.SQL("CREATEROLE" if createrole else "NOCREATEROLE")
            )
        )
        admin.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(f"{role}_app")))
        if read_settings:
            admin.execute(sql.SQL("GRANT pg_read_all_settings TO {}").format(sql.Identifier(role)))
        admin.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(role), sql.Identifier(role)))
        # pg_cron, installed by the administrator in cron.database_name.
        admin.execute("CREATE EXTENSION IF NOT EXISTS pg_cron")
        if cron_usage:
            admin.execute(sql.SQL("GRANT USAGE ON SCHEMA cron TO {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("GRANT EXECUTE ON FUNCTION {} TO {}").format(SCHEDULE, sql.Identifier(role)))
    return Owner(role, f"host=127.0.0.1 port={cluster.port} user={role} dbname={role}", f"{role}_app")


def drop_owner(cluster: LocalCluster, owner: Owner) -> None:
    with psycopg.connect(cluster.conninfo("postgres"), autocommit=True) as admin:
        role = sql.Identifier(owner.role)
        admin.execute("DELETE FROM cron.job WHERE username = %s", (owner.role,))
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(role))
        admin.execute(sql.SQL("DROP OWNED BY {}").format(role))
        admin.execute(sql.SQL("DROP ROLE {}").format(role))
        admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(owner.app_role)))


@pytest.fixture(
    # Each grant alone (CREATEROLE changes nothing pybatch does; the test shows it).
    params=[(False, False), (True, False), (False, True)],
    ids=["plain", "pg_read_all_settings", "createrole"],
)
def owner(request: pytest.FixtureRequest, pg_cluster: LocalCluster) -> Iterator[Owner]:
    read_settings, createrole = request.param
    made = make_owner(pg_cluster, read_settings=read_settings, createrole=createrole, cron_usage=True)
    try:
        yield made
    finally:
        drop_owner(pg_cluster, made)


def test_every_command_works_for_a_non_superuser_owner(owner: Owner) -> None:
    dsn = owner.dsn
    assert "applied" in ok("--dsn", dsn, "migrate")
    for kind in ("writer", "reader", "flusher"):
        assert "GRANT USAGE ON SCHEMA pybatch" in ok("--dsn", dsn, "grant", kind, owner.app_role)
    try:
        assert "installed pybatch-flush-" in ok("--dsn", dsn, "cron", "install", "--interval", "5s")
        state = json.loads(ok("--dsn", dsn, "cron", "status", "--json"))
        assert state["job"]["username"] == owner.role and state["cron_database"] == "postgres", state
        assert state["error"] is None, state
        assert "flush_interval = 5s" in ok("--dsn", dsn, "config", "set", "flush_interval", "5s")
        ok("--dsn", dsn, "flush")
        assert json.loads(ok("--dsn", dsn, "status", "--json"))["health"]["status"] == "ok"
        checks = doctor_checks(dsn)
        assert not any("not preloaded" in message for message in checks.values()), checks
        assert not any(message.startswith("FAIL") for message in checks.values()), checks
        assert checks["pg_cron_preload"].startswith("OK"), checks
        assert checks["pg_cron_extension"].startswith("OK") and "in database postgres" in checks["pg_cron_extension"]
        assert checks["cron_job"].startswith("OK") and "scheduled" in checks["cron_job"], checks
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute("SELECT pg_has_role('pg_read_all_settings', 'USAGE')").fetchone()
        if row == (True,):
            assert "cron.database_name = postgres" in checks["pg_cron_preload"], checks
        else:  # says what it assumed and which grant would let it read the setting
            assert f"GRANT pg_read_all_settings TO {owner.role}" in checks["pg_cron_preload"], checks
            assert "assumes pg_cron's default, postgres" in checks["pg_cron_preload"], checks
    finally:
        assert "removed 2 pg_cron job(s)" in ok("--dsn", dsn, "cron", "remove")


def test_an_owner_without_usage_on_schema_cron_is_told_the_grant(pg_cluster: LocalCluster) -> None:
    made = make_owner(pg_cluster, read_settings=False, createrole=False, cron_usage=False)
    try:
        dsn = made.dsn
        ok("--dsn", dsn, "migrate")
        grant = f"GRANT USAGE ON SCHEMA cron TO {made.role}"
        assert grant in one_line_error("--dsn", dsn, "cron", "install", "--interval", "5s")
        assert grant in one_line_error("--dsn", dsn, "cron", "status")
        checks = doctor_checks(dsn)
        assert checks["pg_cron_extension"].startswith("OK"), checks
        assert checks["cron_job"].startswith("FAIL") and grant in checks["cron_job"], checks
        assert "GRANT EXECUTE ON FUNCTION cron.schedule_in_database" in checks["cron_job"], checks
        ok("--dsn", dsn, "cron", "remove")  # nothing to remove, and no error
    finally:
        drop_owner(pg_cluster, made)


def test_without_pg_cron_loaded_an_owner_who_cannot_read_settings_is_told_so() -> None:
    """pg_cron's library is not loaded (cron.database_name only written in postgresql.conf):
    doctor and `cron install` say so, for a role that may not read shared_preload_libraries."""
    settings = {**TEST_SETTINGS, "shared_preload_libraries": "''"}
    with temporary_cluster(settings, prefix="pybatch-nocron-") as cluster:
        made = make_owner_without_cron(cluster)
        ok("--dsn", made.dsn, "migrate")
        with psycopg.connect(made.dsn, autocommit=True) as conn:
            assert cron.pg_cron_loaded(conn) is False
        checks = doctor_checks(made.dsn)
        assert checks["pg_cron_preload"].startswith("WARN") and "pg_cron is not loaded" in checks["pg_cron_preload"]
        line = one_line_error("--dsn", made.dsn, "cron", "install", "--interval", "5s")
        assert "pg_cron is not in shared_preload_libraries" in line, line


def make_owner_without_cron(cluster: LocalCluster) -> Owner:
    role = f"owner_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(cluster.conninfo("postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        admin.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(role), sql.Identifier(role)))
    return Owner(role, f"host=127.0.0.1 port={cluster.port} user={role} dbname={role}", f"{role}_app")


def test_pg_cron_loaded_is_true_where_pg_cron_hides_its_settings(pg_cluster: LocalCluster) -> None:
    made = make_owner(pg_cluster, read_settings=False, createrole=False, cron_usage=False)
    try:
        with psycopg.connect(made.dsn, autocommit=True) as conn:
            assert cron.pg_cron_loaded(conn) is True
            hidden = conn.execute("SELECT count(*) FROM pg_settings WHERE name LIKE 'cron.%'").fetchone()
            assert hidden == (0,)  # pg_settings hides them from this role: nothing to read there
    finally:
        drop_owner(pg_cluster, made)
