"""Routines and views: one source file each, applied by `pybatch migrate` whenever it changes.

Versioned migrations (migrations/) hold state: tables, types, columns, constraints,
indexes, data. Every function, procedure and view has exactly one source file under
sql/routines/<area>/ or sql/views/, with its SET clauses, COMMENT, REVOKE and GRANT
beside it: a change to a routine is a diff of that one file (Flyway's repeatable
migrations, pgmq's single source).

`pybatch migrate` applies, after the pending versioned migrations and under the same
lock, every source whose text differs from what the database recorded, or whose object
was dropped or altered since (a fingerprint of the catalog object), in one transaction
that holds pybatch.flush_lock so no flush step interleaves. pybatch.routine_sources
records what was applied.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from pybatch import db, resources

log = logging.getLogger(__name__)

# Where the sources live, relative to sql/.
SOURCE_FOLDERS = ("routines", "views")
_CREATE = re.compile(r"^CREATE OR REPLACE (FUNCTION|PROCEDURE|VIEW) pybatch\.([a-z_][a-z0-9_]*)\b", re.MULTILINE)
# What aclexplode() reports for a view, as GRANT spells it.
_PRIVILEGES = {p: p for p in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")}
# A view whose columns change cannot be replaced in place (CREATE OR REPLACE VIEW only
# appends columns): 42P16 (renamed or dropped column), 42804 (a column's type changed).
_VIEW_SHAPE_ERRORS = (pg_errors.InvalidTableDefinition, pg_errors.DatatypeMismatch)


class Kind(enum.StrEnum):
    FUNCTION = "function"
    PROCEDURE = "procedure"
    VIEW = "view"


class State(enum.StrEnum):
    """How a source stands against the database."""

    CURRENT = "current"
    NEW = "new"  # never applied here
    CHANGED = "changed"  # its text differs from what was applied
    DRIFTED = "drifted"  # its object was altered or dropped since it was applied


@dataclass(frozen=True)
class Source:
    """One source file: the object it defines and its text."""

    path: str  # relative to sql/, e.g. "routines/flush/merge_pass_in.sql"
    kind: Kind
    name: str  # schema-qualified, e.g. "pybatch.merge_pass_in"
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class SourceState:
    source: Source
    state: State

    @property
    def out_of_date(self) -> bool:
        return self.state is not State.CURRENT


def parse(path: str, text: str) -> Source:
    """The one object `text` defines. Raises ValueError unless it defines exactly one."""
    found = _CREATE.findall(text)
    if len(found) != 1:
        raise ValueError(
            f"sql/{path} must define exactly one pybatch routine or view with CREATE OR REPLACE, found {len(found)}"
        )
    kind, name = found[0]
    return Source(path=path, kind=Kind(kind.lower()), name=f"pybatch.{name}", text=text)


@cache
def sources() -> tuple[Source, ...]:
    """Every source, in the order they are applied: routines, then views (each by path)."""
    found: list[Source] = []
    for folder in SOURCE_FOLDERS:
        for path, text in sorted(resources.sql_files(folder).items()):
            found.append(parse(path, text))
    names = [s.name for s in found]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"more than one source file defines {', '.join(duplicated)}")
    return tuple(found)


def fingerprints(conn: psycopg.Connection) -> dict[str, str]:
    """A fingerprint of every pybatch routine and view as the catalog holds it (definition with
    its SET clauses and security, comments, owner; not its grants, which `pybatch grant` adds to)."""
    rows = conn.execute(resources.read_sql("catalog/routine_fingerprints.sql")).fetchall()
    return {str(name): str(md5) for name, md5 in rows}


def _recorded(conn: psycopg.Connection) -> dict[str, tuple[str, str]]:
    """source path -> (source_sha256, catalog_md5) as the last migrate recorded them."""
    row = conn.execute("SELECT to_regclass('pybatch.routine_sources') IS NOT NULL").fetchone()
    if not (row and row[0]):
        return {}
    rows = conn.execute("SELECT source, source_sha256, catalog_md5 FROM pybatch.routine_sources").fetchall()
    return {str(path): (str(sha), str(md5)) for path, sha, md5 in rows}


def states(conn: psycopg.Connection) -> list[SourceState]:
    """Every source with how it stands in this database. Read-only."""
    with db.translated("cannot read pybatch's routines"):
        recorded = _recorded(conn)
        catalog = fingerprints(conn)
    result = []
    for source in sources():
        applied = recorded.get(source.path)
        if applied is None:
            state = State.NEW
        elif applied[0] != source.sha256:
            state = State.CHANGED
        elif catalog.get(source.name) != applied[1]:
            state = State.DRIFTED
        else:
            state = State.CURRENT
        result.append(SourceState(source, state))
    return result


def out_of_date(conn: psycopg.Connection) -> list[SourceState]:
    return [s for s in states(conn) if s.out_of_date]


def unknown_objects(conn: psycopg.Connection) -> list[str]:
    """pybatch routines and views in the database that no source file defines (a retired
    routine a migration should have dropped, or one created by hand)."""
    with db.translated("cannot read pybatch's routines"):
        catalog = fingerprints(conn)
    known = {s.name for s in sources()}
    return sorted(name for name in catalog if name not in known)


def apply(conn: psycopg.Connection, *, progress: Callable[[str], None] | None = None) -> list[str]:
    """Apply every out-of-date source, run the install steps and record what was applied, in
    one transaction on `conn` holding pybatch.flush_lock. Returns the paths applied.

    The caller holds the migrate lock and has applied the versioned migrations."""
    with db.translated("cannot apply pybatch's routines"), conn.transaction():
        if _has_citus(conn):
            # DDL on distributed tables and functions in one transaction: one connection per node.
            conn.execute("SET LOCAL citus.multi_shard_modify_mode = 'sequential'")
        # Function bodies refer to one another and to views; order does not matter for them.
        conn.execute("SET LOCAL check_function_bodies = off")
        # No flush step interleaves with a half-replaced flush.
        conn.execute("SELECT FROM pybatch.flush_lock FOR UPDATE")
        stale = [s.source for s in out_of_date(conn)]
        routines = [s for s in stale if s.kind is not Kind.VIEW]
        views = [s for s in stale if s.kind is Kind.VIEW]
        for source in routines:
            if progress:
                progress(source.path)
            _run(conn, source)
        if views:
            for source in views:
                if progress:
                    progress(source.path)
            _apply_views(conn, views)
        _install_steps(conn)
        _record(conn, sources())
    for source in stale:
        log.info("applied routine source", extra={"source": source.path, "object": source.name})
    return [s.path for s in stale]


def _run(conn: psycopg.Connection, source: Source) -> None:
    try:
        conn.execute(source.text)
    except psycopg.Error as exc:
        raise db.translate(exc, f"sql/{source.path} failed") from None


def _apply_views(conn: psycopg.Connection, views: list[Source]) -> None:
    """Replace the changed views in place; if one changes its columns, rebuild every view."""
    try:
        with conn.transaction():
            _create_in_dependency_order(conn, views)
        return
    except _VIEW_SHAPE_ERRORS:
        pass
    every_view = [s for s in sources() if s.kind is Kind.VIEW]
    acls = _view_grants(conn, every_view)
    present = [s for s in every_view if s.name in fingerprints(conn)]
    if present:
        # One statement drops views that depend on one another; a view of another
        # application built on ours makes it fail, by name, and nothing changes.
        conn.execute(
            sql.SQL("DROP VIEW {}").format(sql.SQL(", ").join(sql.Identifier(*s.name.split(".")) for s in present))
        )
    _create_in_dependency_order(conn, every_view)
    for statement in acls:
        conn.execute(statement)


def _create_in_dependency_order(conn: psycopg.Connection, views: Iterable[Source]) -> None:
    """Create each view, postponing one whose view it reads is not there yet."""
    waiting = list(views)
    while waiting:
        postponed: list[Source] = []
        first_error: psycopg.Error | None = None
        for source in waiting:
            try:
                with conn.transaction():
                    conn.execute(source.text)
            except pg_errors.UndefinedTable as exc:
                postponed.append(source)
                first_error = first_error or exc
        if len(postponed) == len(waiting):
            assert first_error is not None
            raise db.translate(first_error, f"sql/{postponed[0].path} failed")
        waiting = postponed


def _view_grants(conn: psycopg.Connection, views: list[Source]) -> list[sql.Composed]:
    """GRANTs that give back what the views' ACLs hold now (grants made by `pybatch grant reader`)."""
    rows = conn.execute(
        "SELECT c.relname, a.privilege_type, r.rolname, a.is_grantable"
        " FROM pg_catalog.pg_class c CROSS JOIN LATERAL pg_catalog.aclexplode(c.relacl) a"
        " LEFT JOIN pg_catalog.pg_roles r ON r.oid = a.grantee"
        " WHERE c.relnamespace = 'pybatch'::regnamespace AND c.relkind = 'v' AND a.grantee <> c.relowner"
        "   AND ('pybatch.' || c.relname) = ANY (%s)",
        ([s.name for s in views],),
    ).fetchall()
    return [
        sql.SQL("GRANT {privilege} ON {view} TO {role}{option}").format(
            privilege=sql.SQL(_PRIVILEGES[str(privilege)]),
            view=sql.Identifier("pybatch", str(view)),
            role=sql.SQL("PUBLIC") if rolname is None else sql.Identifier(str(rolname)),
            option=sql.SQL(" WITH GRANT OPTION" if grantable else ""),
        )
        for view, privilege, rolname, grantable in rows
    ]


def _install_steps(conn: psycopg.Connection) -> None:
    """What every migrate runs once the routines are current: pybatch's tables follow a Citus
    layout, and the merge functions belong to the table's owner (who may have changed)."""
    conn.execute("SELECT pybatch.citus_distribute()")
    conn.execute("SELECT pybatch.align_owner()")


def _record(conn: psycopg.Connection, applied: Iterable[Source]) -> None:
    catalog = fingerprints(conn)
    for source in applied:
        conn.execute(
            "INSERT INTO pybatch.routine_sources AS r (source, object, source_sha256, catalog_md5)"
            " VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (source) DO UPDATE SET object = excluded.object,"
            "   source_sha256 = excluded.source_sha256, catalog_md5 = excluded.catalog_md5,"
            "   applied_at = CASE WHEN (r.source_sha256, r.catalog_md5)"
            "                          = (excluded.source_sha256, excluded.catalog_md5)"
            "                     THEN r.applied_at ELSE pg_catalog.now() END",
            (source.path, source.name, source.sha256, catalog[source.name]),
        )
    conn.execute("DELETE FROM pybatch.routine_sources WHERE NOT (source = ANY (%s))", ([s.path for s in sources()],))


def _has_citus(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'citus')").fetchone()
    return bool(row and row[0])


def script(stale: Iterable[Source]) -> str:
    """The SQL of `stale` sources, for a DBA to read (`pybatch sql`)."""
    return "".join(f"-- sql/{s.path}\n{s.text.rstrip()}\n\n" for s in stale)
