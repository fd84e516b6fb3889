"""Where SQL lives: versioned migrations hold state only; each routine and view has one source."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pybatch import routines

REPO = Path(__file__).resolve().parents[2]
# What only a source file under sql/ may define (a rollback may restore a retired routine).
ROUTINE_DDL = re.compile(
    r"\bCREATE\s+(OR\s+REPLACE\s+)?(FUNCTION|PROCEDURE|VIEW)\b"
    r"|\bALTER\s+(FUNCTION|PROCEDURE|ROUTINE)\b[^;]*\bSET\b",
    re.IGNORECASE,
)


def _without_comments(text: str) -> str:
    return re.sub(r"--[^\n]*", "", text)


def forward_migrations() -> list[Path]:
    return sorted(p for p in (REPO / "migrations").glob("*.sql") if not p.name.endswith(".rollback.sql"))


def test_there_are_migrations_to_check() -> None:
    assert forward_migrations()


@pytest.mark.parametrize("migration", forward_migrations(), ids=lambda p: p.name)
def test_a_versioned_migration_holds_no_routine_or_view(migration: Path) -> None:
    found = ROUTINE_DDL.search(_without_comments(migration.read_text(encoding="utf-8")))
    assert found is None, f"{migration.name}: {found.group(0)!r} belongs in a source file under sql/"


@pytest.mark.parametrize(
    "text",
    [
        "CREATE FUNCTION pybatch.f() RETURNS int LANGUAGE sql AS 'SELECT 1';",
        "create or replace view pybatch.v as select 1;",
        "ALTER FUNCTION pybatch.f() SET search_path = public;",
        "ALTER ROUTINE pybatch.f()\n    SET work_mem = '1MB';",
    ],
)
def test_the_check_catches_routine_ddl(text: str) -> None:
    assert ROUTINE_DDL.search(text)


@pytest.mark.parametrize(
    "text", ["CREATE TABLE pybatch.t (x int);", "ALTER TABLE pybatch.t SET (fillfactor = 70);", "-- CREATE VIEW x"]
)
def test_the_check_leaves_state_alone(text: str) -> None:
    assert ROUTINE_DDL.search(_without_comments(text)) is None


def test_each_source_is_named_after_its_one_object_and_filed_by_kind() -> None:
    sources = routines.sources()
    assert len(sources) > 40
    for source in sources:
        path = Path(source.path)
        assert path.stem == source.name.removeprefix("pybatch."), source.path
        assert path.parts[0] == ("views" if source.kind is routines.Kind.VIEW else "routines"), source.path


def test_every_function_pins_its_search_path() -> None:
    """Procedures cannot (a SET clause forbids COMMIT); every function must."""
    for source in routines.sources():
        if source.kind is routines.Kind.FUNCTION:
            assert "SET search_path = pg_catalog, pg_temp" in source.text, source.path


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("SELECT 1;", 0),
        ("CREATE OR REPLACE VIEW pybatch.a AS SELECT 1;\nCREATE OR REPLACE VIEW pybatch.b AS SELECT 2;", 2),
    ],
)
def test_a_source_must_define_exactly_one_object(text: str, found: int) -> None:
    with pytest.raises(ValueError, match=f"exactly one .* found {found}"):
        routines.parse("views/x.sql", text)


def test_the_loops_application_name_is_the_one_cron_and_uninstall_look_for() -> None:
    """pybatch.flush_loop_deadline() names its session; `cron remove` and `uninstall` end it by that name."""
    from pybatch.schedule import cron

    (deadline,) = (s for s in routines.sources() if s.name == "pybatch.flush_loop_deadline")
    assert f"'application_name', '{cron.LOOP_APPLICATION_NAME}'" in deadline.text
