"""uninstall removes pybatch only: never another app's yoyo bookkeeping, never (without --force)
a user's object that depends on pybatch's, and it says what to do when it cannot end a flush loop."""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import psycopg.conninfo
import pytest
from psycopg import sql

from pybatch import migrate
from pybatch.errors import DependentObjects, PermissionDenied
from pybatch.uninstall import dependants, uninstall
from tests.conftest import run_pybatch
from tests.helpers import connected
from tests.integration.roles import login_role
from tests.integration.test_yoyo_bookkeeping import (
    YOYO_TABLES,
    rows,
    yoyo_apply,
    yoyo_pending,
)


def one_line_error(result, *fragments: str) -> None:  # type: ignore[no-untyped-def]
    assert result.returncode != 0 and "Traceback" not in result.stderr, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def exists(dsn: str, regclass: str) -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (regclass,)).fetchone()
    return bool(row and row[0])


def schema_exists(dsn: str, name: str) -> bool:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s", (name,)).fetchone() == (1,)


@pytest.fixture
def other_app(tmp_path: Path) -> Path:
    """Another application's yoyo migrations, one of them named like pybatch's first."""
    folder = tmp_path / "other_app"
    folder.mkdir()
    (folder / "0001_initial.sql").write_text("CREATE TABLE public.other_app_things (id int PRIMARY KEY);\n")
    (folder / "app_0002.sql").write_text("-- depends: 0001_initial\nINSERT INTO public.other_app_things VALUES (1);\n")
    return folder


def public_yoyo_state(dsn: str) -> dict[str, list[tuple[object, ...]]]:
    return {table: rows(dsn, "public", table) for table in YOYO_TABLES}


# -- another application's yoyo bookkeeping -------------------------------------------------


def test_uninstall_where_pybatch_was_never_installed_keeps_another_apps_yoyo_tables(
    empty_dsn: str, other_app: Path
) -> None:
    """(c) Before, uninstall dropped public._yoyo_migration and friends: the other app's history."""
    yoyo_apply(empty_dsn, other_app)
    before = public_yoyo_state(empty_dsn)
    assert [r[1] for r in before["_yoyo_migration"]] != []

    result = connected(empty_dsn, uninstall)
    assert not result.schema_existed and result.dropped_dependants == ()
    assert public_yoyo_state(empty_dsn) == before
    assert exists(empty_dsn, "public.other_app_things")
    assert yoyo_pending(empty_dsn, other_app) == []

    cli = run_pybatch("--dsn", empty_dsn, "uninstall", "--yes")
    assert cli.returncode == 0, cli.stderr
    assert public_yoyo_state(empty_dsn) == before


def test_uninstall_of_a_new_install_beside_another_app(empty_dsn: str, other_app: Path) -> None:
    yoyo_apply(empty_dsn, other_app)
    connected(empty_dsn, migrate.apply)
    before = public_yoyo_state(empty_dsn)
    result = connected(empty_dsn, uninstall)
    assert result.schema_existed and result.dropped_workspace_agents
    assert not schema_exists(empty_dsn, "pybatch") and not schema_exists(empty_dsn, migrate.BOOKKEEPING_SCHEMA)
    assert public_yoyo_state(empty_dsn) == before
    assert yoyo_pending(empty_dsn, other_app) == []


# -- objects of others that depend on pybatch's ---------------------------------------------

VIEW = "CREATE VIEW public.my_status AS SELECT agent_id, status FROM pybatch.agent_status"
VIEW_ON_VIEW = "CREATE VIEW public.my_status_count AS SELECT count(*) AS n FROM public.my_status"
COLUMN = "CREATE TABLE public.flush_audit (id int PRIMARY KEY, result pybatch.flush_result)"


def test_pybatchs_own_objects_are_not_dependants(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        assert dependants(conn) == []


def test_a_dependent_view_refuses_uninstall_then_force_drops_it(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(VIEW)
        conn.execute(VIEW_ON_VIEW)
    with pytest.raises(DependentObjects, match=r"view public\.my_status") as refused:
        connected(dsn, uninstall)
    assert refused.value.objects == ("view public.my_status", "view public.my_status_count")
    assert "--force" in str(refused.value) and "nothing was removed" in str(refused.value)
    assert exists(dsn, "pybatch.settings") and exists(dsn, "public.my_status")  # nothing removed
    assert schema_exists(dsn, migrate.BOOKKEEPING_SCHEMA)

    result = connected(dsn, uninstall, force=True)
    assert result.dropped_dependants == ("view public.my_status", "view public.my_status_count")
    assert not exists(dsn, "public.my_status") and not exists(dsn, "public.my_status_count")
    assert not schema_exists(dsn, "pybatch")


def test_a_dependent_column_refuses_uninstall_then_force_drops_only_the_column(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(COLUMN)
        conn.execute("INSERT INTO public.flush_audit VALUES (1, NULL)")
    with pytest.raises(DependentObjects) as refused:
        connected(dsn, uninstall)
    assert refused.value.objects == ("table column public.flush_audit.result",)
    assert exists(dsn, "pybatch.settings")

    result = connected(dsn, uninstall, force=True)
    assert result.dropped_dependants == ("table column public.flush_audit.result",)
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT * FROM public.flush_audit").fetchall() == [(1,)]  # the table and its row stay
    assert not schema_exists(dsn, "pybatch")


@pytest.mark.parametrize(
    ("ddl", "named"),
    [
        (
            "CREATE FUNCTION public.flush_ok(r pybatch.flush_result) RETURNS boolean LANGUAGE sql AS 'SELECT true'",
            "function public.flush_ok(pybatch.flush_result)",
        ),
        (
            "CREATE TABLE public.notes (agent_id uuid REFERENCES public.workspace_agents (id))",
            "table constraint notes_agent_id_fkey on public.notes",
        ),
        ("CREATE VIEW public.staged AS SELECT * FROM pybatch.heartbeats", "view public.staged"),
        ("CREATE VIEW public.history AS SELECT * FROM pybatch_migrations._yoyo_migration", "view public.history"),
    ],
    ids=["function-of-type", "fk-to-created-target", "view-on-table", "view-on-bookkeeping"],
)
def test_other_kinds_of_dependants_are_listed(dsn: str, ddl: str, named: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(ddl)
        assert dependants(conn) == [named]
    with pytest.raises(DependentObjects, match=re.escape(named)):
        connected(dsn, uninstall)
    assert exists(dsn, "pybatch.settings")
    assert connected(dsn, uninstall, force=True).dropped_dependants == (named,)


def test_cli_refuses_in_one_line_and_force_names_what_it_dropped(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(VIEW)
        conn.execute(COLUMN)
    refused = run_pybatch("--dsn", dsn, "uninstall", "--yes")
    one_line_error(refused, "view public.my_status", "table column public.flush_audit.result", "--force")
    assert exists(dsn, "pybatch.settings") and exists(dsn, "public.my_status")

    forced = run_pybatch("--dsn", dsn, "uninstall", "--yes", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "dropped (--force): view public.my_status" in forced.stdout
    assert "dropped (--force): table column public.flush_audit.result" in forced.stdout
    assert "uninstalled" in forced.stdout
    assert not exists(dsn, "public.my_status") and exists(dsn, "public.flush_audit")


# -- a non-superuser owner and a flush loop it cannot end ----------------------------------


@pytest.fixture
def owner_dsn(empty_dsn: str) -> Iterator[str]:
    """pybatch installed by a non-superuser role that owns the database's install."""
    with psycopg.connect(empty_dsn, autocommit=True) as admin, login_role(admin, "owner") as role:
        dbname = psycopg.conninfo.conninfo_to_dict(empty_dsn)["dbname"]
        admin.execute(
            sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(sql.Identifier(str(dbname)), sql.Identifier(role))
        )
        admin.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(role)))
        dsn = psycopg.conninfo.make_conninfo(empty_dsn, user=role)
        connected(dsn, migrate.apply)
        yield dsn


def run_loop(dsn: str, started: threading.Event) -> threading.Thread:
    """A flush loop as pg_cron 1.4 runs it (CALL pybatch.flush_loop), in a session of its own."""

    def loop() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            started.set()
            with contextlib.suppress(psycopg.OperationalError):  # terminated: what uninstall does to a loop
                conn.execute("CALL pybatch.flush_loop('1 second', now() + interval '60 seconds')")

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    assert started.wait(10)
    return thread


def loop_pids(dsn: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        return [
            r[0]
            for r in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND application_name = 'pybatch-flush-loop'"
            ).fetchall()
        ]


def wait_for_loop(superuser_dsn: str) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pids = loop_pids(superuser_dsn)
        if pids:
            return pids[0]
        time.sleep(0.05)
    raise AssertionError("the flush loop did not start")


def test_owner_uninstall_with_a_superusers_loop_says_what_to_do(empty_dsn: str, owner_dsn: str) -> None:
    """Before: "must be a superuser to terminate superuser process", after removing the jobs."""
    loop = run_loop(empty_dsn, threading.Event())  # as the superuser, like a superuser's pg_cron job
    pid = wait_for_loop(empty_dsn)

    with pytest.raises(PermissionDenied) as refused:
        connected(owner_dsn, uninstall)
    message = str(refused.value)
    assert f"pid {pid}" in message and "superuser 'postgres'" in message
    assert "`pybatch uninstall` as a superuser" in message and f"pg_terminate_backend({pid})" in message
    assert "nothing was removed" in message
    assert exists(owner_dsn, "pybatch.settings")  # nothing removed

    cli = run_pybatch("--dsn", owner_dsn, "uninstall", "--yes")
    one_line_error(cli, f"pid {pid}", "as a superuser")
    assert exists(owner_dsn, "pybatch.settings")

    # Done as the message says (the superuser ends the loop), the owner's uninstall goes through.
    with psycopg.connect(empty_dsn) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    loop.join(10)
    assert connected(owner_dsn, uninstall).schema_existed
    assert not schema_exists(empty_dsn, "pybatch")


def test_owner_uninstall_ends_its_own_loop(empty_dsn: str, owner_dsn: str) -> None:
    loop = run_loop(owner_dsn, threading.Event())
    wait_for_loop(empty_dsn)
    result = connected(owner_dsn, uninstall)
    assert result.schema_existed
    loop.join(10)
    assert not loop.is_alive() and loop_pids(empty_dsn) == []
    assert not schema_exists(empty_dsn, "pybatch")
