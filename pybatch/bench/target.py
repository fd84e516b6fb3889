"""Which `workspace_agents` the bench writes: Coder's real table (the default) or pybatch's own.

- coder:   Coder's table as its dump.sql has it (sql/bench/coder_workspace_agents.sql):
           34 columns, rows of ~360 bytes, 4 indexes, a trigger, 2 foreign keys,
           fillfactor 100. pybatch migrates onto it as it would in a real deployment.
           When the database the bench was pointed at already holds such a table it is
           used as it is; otherwise the bench creates a scratch database beside it
           (<db>_bench_coder, marked by a comment), migrates it, and drops it afterwards.
- minimal: the database's own public.workspace_agents, as `pybatch migrate` created it
           (Coder's connection columns only): the table of the older figures.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from psycopg import conninfo, sql

from pybatch import db, migrate, resources
from pybatch.errors import ConfigError, PybatchError

log = logging.getLogger(__name__)

TABLES = ("coder", "minimal")
SCRATCH_SUFFIX = "_bench_coder"
SCRATCH_MARKER = "pybatch bench scratch database: Coder's workspace_agents; dropped after each run"
# Columns only Coder's table has (NOT NULL there, absent from pybatch's own).
CODER_COLUMNS = ("resource_id", "auth_token", "architecture", "operating_system")
TABLE_SIZES = """
SELECT pg_catalog.pg_relation_size('public.workspace_agents'::pg_catalog.regclass) AS heap_bytes,
       COALESCE(pg_catalog.jsonb_object_agg(i.indexrelid::pg_catalog.regclass::text,
                                            pg_catalog.pg_relation_size(i.indexrelid))
                FILTER (WHERE i.indexrelid IS NOT NULL), '{}') AS index_bytes
FROM (SELECT 1) AS one
LEFT JOIN pg_catalog.pg_index i ON i.indrelid = 'public.workspace_agents'::pg_catalog.regclass
"""


def check_table(table: str) -> str:
    if table not in TABLES:
        raise ConfigError(f"table: unknown table {table!r} (choose from {', '.join(TABLES)})")
    return table


def is_coder_table(conn: psycopg.Connection) -> bool:
    """Does public.workspace_agents have Coder's own columns (not only its connection columns)?"""
    with db.translated("cannot inspect public.workspace_agents"):
        row = conn.execute(
            "SELECT count(*) FROM pg_catalog.pg_attribute "
            "WHERE attrelid = pg_catalog.to_regclass('public.workspace_agents') "
            "AND attname = ANY (%s) AND NOT attisdropped",
            (list(CODER_COLUMNS),),
        ).fetchone()
    return row is not None and int(row[0]) == len(CODER_COLUMNS)


@contextlib.contextmanager
def bench_target(dsn: str, table: str, progress: Callable[[str], None] | None = None) -> Iterator[str]:
    """Yield the DSN of a database whose public.workspace_agents is `table`-shaped and migrated."""
    say = progress or (lambda message: None)
    check_table(table)
    with db.connect(dsn) as conn:
        coder_here = is_coder_table(conn)
        if table == "minimal" and coder_here:
            raise ConfigError(
                "--table minimal: public.workspace_agents here is Coder's table; "
                "point the bench at a database where pybatch created its own"
            )
        scratch = None if table == "minimal" or coder_here else _scratch_name(str(conn.info.dbname))
        if scratch is not None:
            _drop_scratch(conn, scratch)
            with db.translated(
                f"--table coder: cannot create the scratch database {scratch} (needs CREATEDB; or use --table minimal)"
            ):
                conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(scratch)))
                conn.execute(
                    sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(scratch), sql.Literal(SCRATCH_MARKER))
                )
    if scratch is None:
        yield dsn  # the table here already has the shape asked for
        return
    target = conninfo.make_conninfo(dsn, dbname=scratch)
    try:
        say(f"scratch database {scratch}: Coder's workspace_agents, then pybatch migrate")
        with db.connect(target) as conn:
            with db.translated("cannot create Coder's workspace_agents"):
                conn.execute(resources.read_sql("bench/coder_workspace_agents.sql"))
            migrate.apply(conn)
        yield target
    finally:
        with db.connect(dsn) as conn:
            _drop_scratch(conn, scratch)


def _scratch_name(dbname: str) -> str:
    return dbname[: 63 - len(SCRATCH_SUFFIX)] + SCRATCH_SUFFIX


def _drop_scratch(conn: psycopg.Connection, name: str) -> None:
    """Drop the scratch database of an earlier run, never a database the bench did not create."""
    with db.translated(f"cannot drop the scratch database {name}"):
        row = _database_comment(conn, name)
        if row is None:
            return
        if row[0] != SCRATCH_MARKER:
            raise PybatchError(
                f"database {name} exists and was not created by the bench: drop or rename it, or use --table minimal"
            )
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def _database_comment(conn: psycopg.Connection, name: str) -> tuple[str | None] | None:
    """(comment,) of database `name`, None when there is no such database."""
    return conn.execute(
        "SELECT pg_catalog.shobj_description(oid, 'pg_database') FROM pg_catalog.pg_database WHERE datname = %s",
        (name,),
    ).fetchone()


def is_scratch(conn: psycopg.Connection) -> bool:
    """Is conn's database one the bench created (and drops after the run)?"""
    row = _database_comment(conn, str(conn.info.dbname))
    return row is not None and row[0] == SCRATCH_MARKER


def table_sizes(conn: psycopg.Connection) -> dict[str, Any]:
    """Heap bytes and the bytes of every index of public.workspace_agents, now."""
    with db.translated("cannot read the size of public.workspace_agents"):
        row = conn.execute(TABLE_SIZES).fetchone()
    if row is None:
        raise PybatchError("public.workspace_agents has no size")
    return {"heap_bytes": int(row[0]), "index_bytes": {str(k): int(v) for k, v in dict(row[1]).items()}}


def growth(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Sizes at both ends and the growth in % of the heap, of each index and of the worst index."""

    def pct(a: int, b: int) -> float | None:
        return round(100 * (b - a) / a, 2) if a else None

    indexes = {
        name: {
            "before": size,
            "after": after["index_bytes"].get(name, 0),
            "growth_pct": pct(size, after["index_bytes"].get(name, 0)),
        }
        for name, size in sorted(before["index_bytes"].items())
    }
    index_growths = [i["growth_pct"] for i in indexes.values() if i["growth_pct"] is not None]
    return {
        "heap_bytes_before": before["heap_bytes"],
        "heap_bytes_after": after["heap_bytes"],
        "heap_growth_pct": pct(before["heap_bytes"], after["heap_bytes"]),
        "index_bytes_before": sum(before["index_bytes"].values()),
        "index_bytes_after": sum(after["index_bytes"].values()),
        "worst_index_growth_pct": max(index_growths, default=None),
        "indexes": indexes,
    }
