"""Migrations: apply, roll back, apply again; concurrent runs; an existing workspace_agents."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime

import psycopg
import pytest

from pybatch import migrate, routines
from pybatch.errors import ConfigError, MigrationError, NotMigrated
from pybatch.flush import flush
from tests.helpers import connected

CODER_LIKE_TABLE = """
CREATE TABLE public.workspace_resources (id uuid PRIMARY KEY);
CREATE TABLE public.workspace_agents (
    id uuid PRIMARY KEY,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    name varchar(64) NOT NULL,
    resource_id uuid NOT NULL REFERENCES public.workspace_resources (id) ON DELETE CASCADE,
    auth_token uuid NOT NULL,
    first_connected_at timestamptz,
    last_connected_at timestamptz,
    disconnected_at timestamptz,
    last_connected_replica_id uuid,
    connection_timeout_seconds integer NOT NULL DEFAULT 0,
    lifecycle_state text NOT NULL DEFAULT 'created',
    CONSTRAINT name_not_empty CHECK (name <> '')
);
CREATE INDEX workspace_agents_resource_id_idx ON public.workspace_agents (resource_id);
CREATE UNIQUE INDEX workspace_agents_auth_token_idx ON public.workspace_agents (auth_token);
CREATE TABLE public.workspace_apps (
    id uuid PRIMARY KEY,
    agent_id uuid NOT NULL REFERENCES public.workspace_agents (id) ON DELETE CASCADE
);
"""


def applied_ids(conn: psycopg.Connection) -> list[str]:
    return [m.id for m in migrate.status(conn) if m.applied]


def table_exists(dsn: str, name: str) -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()
        return bool(row and row[0])


def test_apply_rollback_apply(empty_dsn: str, empty_conn: psycopg.Connection) -> None:
    everything = [m.id for m in migrate.status(empty_conn)]
    first = migrate.apply(empty_conn)
    assert first.migrations == everything
    assert sorted(first.routines) == sorted(s.path for s in routines.sources())  # every routine, once
    assert applied_ids(empty_conn) == everything
    assert migrate.apply(empty_conn) == migrate.Applied([], [])  # idempotent
    # Roll back every migration, newest first.
    for expected in reversed(everything):
        assert migrate.rollback(empty_conn) == expected
    assert migrate.rollback(empty_conn) is None
    assert not table_exists(empty_dsn, "pybatch.heartbeats")
    assert not table_exists(empty_dsn, "public.workspace_agents")  # pybatch created it, so it went
    assert migrate.apply(empty_conn).migrations == everything
    assert table_exists(empty_dsn, "pybatch.heartbeats")


def _session_state(conn: psycopg.Connection) -> tuple[object, ...]:
    """What a library operation must leave as it found it on the caller's connection."""
    row = conn.execute(
        "SELECT current_setting('search_path'), current_setting('application_name'),"
        " (SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'advisory')"
    ).fetchone()
    assert row is not None
    return (conn.autocommit, conn.info.transaction_status, conn.info.backend_pid, *row)


def test_apply_and_rollback_leave_the_callers_connection_as_found(
    empty_dsn: str, empty_conn: psycopg.Connection
) -> None:
    empty_conn.execute("CREATE SCHEMA app")
    empty_conn.execute("SET search_path = app, public")
    before = _session_state(empty_conn)
    assert before[0] is True and before[1] == psycopg.pq.TransactionStatus.IDLE
    assert before[3] == "app, public" and before[5] == 0
    assert migrate.apply(empty_conn).migrations  # something was applied (through yoyo's own session)
    assert _session_state(empty_conn) == before  # same session, search_path, no lock, no transaction
    assert migrate.rollback(empty_conn) is not None
    assert _session_state(empty_conn) == before
    assert migrate.status(empty_conn) and migrate.migration_sql(empty_conn)
    assert _session_state(empty_conn) == before
    # The lock was released: another session takes it at once.
    with psycopg.connect(empty_dsn, autocommit=True) as other:
        row = other.execute("SELECT pg_try_advisory_lock(%s)", (migrate.MIGRATE_LOCK_KEY,)).fetchone()
        assert row == (True,)


def test_a_connection_in_a_transaction_is_refused(empty_dsn: str) -> None:
    with psycopg.connect(empty_dsn) as conn:  # not autocommit
        with pytest.raises(ConfigError, match=r"migrate\.apply needs an autocommit connection"):
            migrate.apply(conn)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    with (
        psycopg.connect(empty_dsn, autocommit=True) as conn,
        conn.transaction(),
        pytest.raises(ConfigError, match=r"migrate\.status needs an autocommit connection"),
    ):
        migrate.status(conn)
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        assert applied_ids(conn) == []  # nothing was installed


def test_two_migrate_runs_at_once_are_safe(empty_dsn: str) -> None:
    results: list[migrate.Applied] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(connected(empty_dsn, migrate.apply))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    everything = [m.id for m in connected(empty_dsn, migrate.status)]
    assert sorted((r.migrations for r in results), key=len)[-1] == everything
    assert sum(len(r.migrations) for r in results) == len(everything)  # each migration applied exactly once
    assert sum(len(r.routines) for r in results) == len(routines.sources())  # and each routine


def test_existing_coder_like_table_is_used_and_survives_rollback(empty_dsn: str) -> None:
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute(CODER_LIKE_TABLE)
        resource = uuid.uuid4()
        agent = uuid.uuid4()
        conn.execute("INSERT INTO public.workspace_resources VALUES (%s)", (resource,))
        conn.execute(
            "INSERT INTO public.workspace_agents (id, created_at, updated_at, name, resource_id, auth_token) "
            "VALUES (%s, now(), now(), 'main', %s, gen_random_uuid())",
            (agent, resource),
        )
        conn.execute("INSERT INTO public.workspace_apps VALUES (gen_random_uuid(), %s)", (agent,))
        migrate.apply(conn)
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        beat_at = datetime(2026, 1, 1, tzinfo=UTC)
        conn.execute("INSERT INTO pybatch.heartbeats (agent_id, beat_at) VALUES (%s, %s)", (agent, beat_at))
        result = flush(conn)
        assert result.ok and result.agents_updated == 1
        row = conn.execute("SELECT last_connected_at, name, lifecycle_state FROM public.workspace_agents").fetchone()
        assert row == (beat_at, "main", "created")
        settings = conn.execute("SELECT created_workspace_agents FROM pybatch.settings").fetchone()
        assert settings == (False,)
    while connected(empty_dsn, migrate.rollback):
        pass
    assert table_exists(empty_dsn, "public.workspace_agents")
    assert table_exists(empty_dsn, "public.workspace_apps")
    assert not table_exists(empty_dsn, "pybatch.settings")


@pytest.mark.parametrize(
    ("ddl", "message"),
    [
        (
            "ALTER TABLE public.workspace_agents DROP COLUMN last_connected_replica_id",
            'missing column "last_connected_replica_id"',
        ),
        ("ALTER TABLE public.workspace_agents DROP COLUMN disconnected_at", 'missing column "disconnected_at"'),
        (
            "ALTER TABLE public.workspace_agents ALTER COLUMN last_connected_at TYPE timestamp",
            'column "last_connected_at" has type timestamp without time zone',
        ),
    ],
)
def test_missing_or_wrong_column_fails_naming_it(empty_dsn: str, ddl: str, message: str) -> None:
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute(CODER_LIKE_TABLE)
        conn.execute(ddl)
        with pytest.raises(MigrationError, match=message):
            migrate.apply(conn)
        assert applied_ids(conn) == []
    assert not table_exists(empty_dsn, "pybatch.heartbeats")  # the failed migration left nothing behind


def test_flush_before_migrate_says_run_migrate(empty_dsn: str) -> None:
    with psycopg.connect(empty_dsn, autocommit=True) as conn, pytest.raises(NotMigrated, match="pybatch migrate"):
        flush(conn)


def test_migration_sql_lists_pending_then_nothing(empty_conn: psycopg.Connection) -> None:
    text = migrate.migration_sql(empty_conn)
    assert "CREATE UNLOGGED TABLE pybatch.heartbeats" in text
    migrate.apply(empty_conn)
    assert migrate.migration_sql(empty_conn) == ""
    assert "CREATE UNLOGGED TABLE pybatch.heartbeats" in migrate.migration_sql(empty_conn, all_migrations=True)
    assert "CREATE UNLOGGED TABLE pybatch.heartbeats" in migrate.migration_sql(None)
