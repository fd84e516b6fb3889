"""Databases in other encodings than UTF8, through the CLI and the library.

A SQL_ASCII database is what initdb gives under the POSIX locale: psycopg returns its text
as bytes unless the session sets client_encoding, and a LATIN1 one cannot take a character
outside Latin-1. Every session pybatch opens sets client_encoding to UTF8, so every command
works in both; a caller's own SQL_ASCII connection is refused with a line saying what to do.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import psycopg
import psycopg.conninfo
import pytest
from psycopg import sql
from psycopg_pool import ConnectionPool

from pybatch import HeartbeatClient, db, doctor, grants, migrate, settings, status
from pybatch.errors import ConfigError
from pybatch.local import LocalCluster, temporary_cluster
from pybatch.schedule import cron
from tests.conftest import TEST_SETTINGS, run_pybatch
from tests.helpers import connected, make_agents

ENCODINGS = ["SQL_ASCII", "LATIN1"]


def create_database(cluster: LocalCluster, name: str, encoding: str) -> None:
    with psycopg.connect(cluster.conninfo("postgres"), autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE DATABASE {} ENCODING {} LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0").format(
                sql.Identifier(name), sql.Literal(encoding)
            )
        )


def drop_database(cluster: LocalCluster, name: str) -> None:
    with psycopg.connect(cluster.conninfo("postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(params=ENCODINGS)
def encoded_dsn(request: pytest.FixtureRequest, pg_cluster: LocalCluster) -> Iterator[str]:
    """An empty database in the given encoding, on the session's cluster."""
    name = f"enc_{request.param.lower()}_{uuid.uuid4().hex[:8]}"
    create_database(pg_cluster, name, request.param)
    try:
        yield pg_cluster.conninfo(name)
    finally:
        drop_database(pg_cluster, name)


def server_encoding(dsn: str) -> str:
    with psycopg.connect(dsn, autocommit=True, client_encoding="UTF8") as conn:
        row = conn.execute("SHOW server_encoding").fetchone()
    assert row is not None
    return str(row[0])


def ok(*args: str) -> str:
    result = run_pybatch(*args)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "unexpected error" not in result.stderr, result.stderr
    assert "b'" not in result.stdout, result.stdout  # text read as bytes
    return result.stdout


def doctor_lines(dsn: str) -> dict[str, str]:
    result = run_pybatch("--dsn", dsn, "doctor")
    assert "Traceback" not in result.stderr and "unexpected error" not in result.stderr, result.stderr
    lines: dict[str, str] = {}
    for line in result.stdout.splitlines():
        level, _, rest = line.partition(" ")
        name, _, message = rest.strip().partition(": ")
        lines[name] = f"{level} {message}"
    return lines


def test_every_command_works_in_the_database_encoding(encoded_dsn: str) -> None:
    assert server_encoding(encoded_dsn) in ENCODINGS
    try:
        assert "applied" in ok("--dsn", encoded_dsn, "migrate")
        assert ok("--dsn", encoded_dsn, "migrate").strip() == "schema is up to date"
        with psycopg.connect(encoded_dsn, autocommit=True, client_encoding="UTF8") as conn:
            agents = make_agents(conn, 3)
            conn.execute("INSERT INTO pybatch.heartbeats (agent_id) SELECT unnest(%s::uuid[])", (agents,))
        flushed = json.loads(ok("--dsn", encoded_dsn, "flush", "--json"))
        assert flushed["agents_updated"] == 3, flushed
        status = json.loads(ok("--dsn", encoded_dsn, "status", "--json"))
        assert status["health"]["status"] == "ok", status["health"]
        installed = ok("--dsn", encoded_dsn, "cron", "install", "--interval", "10s")
        assert "installed pybatch-flush-" in installed
        assert "10 seconds" in ok("--dsn", encoded_dsn, "cron", "status")
        assert "flush_interval = 5s" in ok("--dsn", encoded_dsn, "config", "set", "flush_interval", "5s")
        assert "5 seconds" in ok("--dsn", encoded_dsn, "cron", "status")  # the job was rescheduled
        checks = doctor_lines(encoded_dsn)
        for name in ("server_version", "migrations", "target_table", "pg_cron_preload", "pg_cron_extension"):
            assert checks[name].startswith("OK"), (name, checks)
        assert checks["cron_job"].startswith("OK"), checks
    finally:
        ok("--dsn", encoded_dsn, "cron", "remove")


def test_the_client_writes_through_its_own_connections_and_a_callers_pool(encoded_dsn: str) -> None:
    connected(psycopg.conninfo.make_conninfo(encoded_dsn, client_encoding="UTF8"), migrate.apply)
    with db.connect(encoded_dsn) as own:  # not the database's LATIN1 or SQL_ASCII
        assert own.info.parameter_status("client_encoding") == "UTF8"
    with psycopg.connect(encoded_dsn, autocommit=True, client_encoding="UTF8") as conn:
        agents = make_agents(conn, 2)
    with HeartbeatClient(encoded_dsn) as client:
        client.beat(agents[0])
    with HeartbeatClient(encoded_dsn, mode="buffered", write_interval="50ms") as client:
        client.beat(agents[1])
    # The caller's pool in the database's own client encoding: the client reads no text.
    with (
        ConnectionPool(encoded_dsn, min_size=1, max_size=2, open=True) as pool,
        HeartbeatClient(pool=pool) as client,
    ):
        client.beat(agents[0])
        client.disconnect(agents[1])
    with psycopg.connect(encoded_dsn, autocommit=True, client_encoding="UTF8") as conn:
        staged = conn.execute("SELECT count(*) FROM pybatch.heartbeats").fetchone()
        disconnected = conn.execute(
            "SELECT disconnected_at IS NOT NULL FROM public.workspace_agents WHERE id = %s", (agents[1],)
        ).fetchone()
    assert staged == (3,) and disconnected == (True,)


def test_a_callers_sql_ascii_connection_is_refused_naming_the_fix(pg_cluster: LocalCluster) -> None:
    name = f"enc_caller_{uuid.uuid4().hex[:8]}"
    create_database(pg_cluster, name, "SQL_ASCII")
    try:
        with psycopg.connect(pg_cluster.conninfo(name), autocommit=True) as conn:
            with pytest.raises(ConfigError, match="client_encoding='UTF8'") as caught:
                migrate.apply(conn)
            assert "SQL_ASCII" in str(caught.value) and name in str(caught.value)
            for operation in (
                doctor.doctor,
                status.health,
                status.status,
                lambda c: settings.set_setting(c, "flush_interval", "5s"),
                lambda c: grants.grant(c, grants.Grant.WRITER, "postgres"),
                lambda c: cron.status(c),
                cron.remove,
            ):
                with pytest.raises(ConfigError, match="client_encoding='UTF8'"):
                    operation(conn)
        # pybatch's own sessions set UTF8 whatever the DSN says the database is.
        with db.connect(pg_cluster.conninfo(name)) as own:
            assert own.info.parameter_status("client_encoding") == "UTF8"
            assert own.execute("SELECT current_database()").fetchone() == (name,)
            assert db.params_like(own)["client_encoding"] == db.CLIENT_ENCODING
    finally:
        drop_database(pg_cluster, name)


def test_pg_crons_database_in_another_encoding() -> None:
    """cron.database_name names a SQL_ASCII database; the app database is UTF8."""
    settings = {**TEST_SETTINGS, "cron.database_name": "'cron_ascii'"}
    with temporary_cluster(settings, prefix="pybatch-cronenc-") as cluster:
        create_database(cluster, "cron_ascii", "SQL_ASCII")
        with psycopg.connect(cluster.conninfo("cron_ascii"), autocommit=True, client_encoding="UTF8") as cron_db:
            cron_db.execute("CREATE EXTENSION pg_cron")
        app = cluster.conninfo()
        assert server_encoding(app) == "UTF8" and server_encoding(cluster.conninfo("cron_ascii")) == "SQL_ASCII"
        ok("--dsn", app, "migrate")
        assert "installed pybatch-flush-pybatch" in ok("--dsn", app, "cron", "install", "--interval", "10s")
        assert "in database cron_ascii" in ok("--dsn", app, "cron", "status")
        assert "flush_interval = 5s" in ok("--dsn", app, "config", "set", "flush_interval", "5s")
        checks = doctor_lines(app)
        assert checks["pg_cron_extension"].startswith("OK") and "cron_ascii" in checks["pg_cron_extension"], checks
        assert checks["job_run_details"].startswith("OK"), checks
        ok("--dsn", app, "cron", "remove")
        with psycopg.connect(cluster.conninfo("cron_ascii"), autocommit=True, client_encoding="UTF8") as cron_db:
            assert cron_db.execute("SELECT count(*) FROM cron.job").fetchone() == (0,)
