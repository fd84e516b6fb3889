"""Core commands: migrate, flush, psql, uninstall."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from typing import Any

import psycopg

from pybatch import db, migrate
from pybatch.cli.common import bounded_int, dsn, print_json
from pybatch.errors import ConfigError, PybatchError
from pybatch.flush import flush
from pybatch.schedule import cron
from pybatch.status import COUNT_BOUNDS
from pybatch.uninstall import uninstall

# `pybatch flush`: another flush held the lock, nothing was done (distinct from 0 and errors).
EXIT_SKIPPED = 3
MAX_ROWS_LOW, MAX_ROWS_HIGH = COUNT_BOUNDS["max_rows_per_flush"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("migrate", help="install or upgrade the pybatch schema (yoyo migrations)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--status", action="store_true", help="list applied and pending migrations")
    group.add_argument("--rollback", action="store_true", help="undo the last applied migration")
    p.set_defaults(handler=cmd_migrate)

    p = subparsers.add_parser("flush", help="run one flush now and print its statistics")
    p.add_argument(
        "--max-rows",
        type=bounded_int(MAX_ROWS_LOW, MAX_ROWS_HIGH),
        default=None,
        help=f"drain at most this many staged rows, {MAX_ROWS_LOW} to {MAX_ROWS_HIGH} "
        "(default: settings.max_rows_per_flush)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=cmd_flush)

    p = subparsers.add_parser(
        "psql",
        help="open psql on the configured database (pybatch's global options may follow `psql`; "
        "every other argument, and all after `--`, goes to psql)",
    )
    p.add_argument("psql_args", nargs=argparse.REMAINDER, help="extra arguments for psql")
    p.set_defaults(handler=cmd_psql)

    p = subparsers.add_parser(
        "uninstall",
        help="remove pybatch's pg_cron job, schema and migration tables (a workspace_agents it did not create stays)",
    )
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument(
        "--force",
        action="store_true",
        help="also drop objects of others that depend on pybatch's (views, columns of its types, ...); "
        "without it uninstall lists them and refuses",
    )
    p.set_defaults(handler=cmd_uninstall)


def cmd_migrate(args: argparse.Namespace) -> int:
    with db.connect(dsn(args)) as conn:
        if not args.status:
            db.require_primary(conn, "migrate")
            if db.through_pooler(conn):
                # Its lock is a session lock: a transaction pooler could leave it held on a pooled backend.
                raise PybatchError(
                    "migrate: this connection goes through a connection pooler; migrate holds a session lock, "
                    "so point --dsn at the server itself (or a session-mode pool)"
                )
        if args.status:
            for state in migrate.status(conn):
                print(f"{'applied' if state.applied else 'pending'}  {state.id}")
            return 0
        if args.rollback:
            rolled = migrate.rollback(conn, before=lambda: _remove_jobs(conn))
            print(f"rolled back {rolled}" if rolled else "nothing to roll back")
            return 0
        applied = migrate.apply(conn, progress=lambda mid: print(f"applying {mid} ...", file=sys.stderr))
    print(f"applied {len(applied)} migration(s): {', '.join(applied)}" if applied else "schema is up to date")
    return 0


def _remove_jobs(conn: psycopg.Connection) -> None:
    """Remove pybatch's pg_cron jobs for this database before its schema goes."""
    cron.remove(conn)


def cmd_flush(args: argparse.Namespace) -> int:
    with db.connect(dsn(args)) as conn:
        db.require_primary(conn, "flush")
        result = flush(conn, max_rows=args.max_rows, raise_on_error=True)
    if args.json:
        print_json(result.as_dict())
    else:
        data = result.as_dict()
        print("  ".join(f"{key}={value}" for key, value in data.items() if value is not None))
    if result.skipped:
        print(
            "pybatch: flush skipped: another flush holds pybatch.flush_lock "
            "(see SELECT * FROM pybatch.flush_lock_holders)",
            file=sys.stderr,
        )
        return EXIT_SKIPPED
    return 0


def cmd_psql(args: argparse.Namespace) -> int:
    psql = shutil.which("psql")
    if psql is None:
        raise PybatchError("psql not found: install postgresql-client")
    target = dsn(args)
    argv = [psql, target, *args.psql_args] if target else [psql, *args.psql_args]
    os.execv(psql, argv)
    return 0  # not reached


def cmd_uninstall(args: argparse.Namespace) -> int:
    target = dsn(args)
    if not args.yes:
        if not sys.stdin.isatty():
            raise ConfigError("uninstall asks for confirmation and stdin is not a terminal: pass --yes")
        answer = input(
            "Remove pybatch (its pg_cron job, schema pybatch and staged heartbeats) from this database? Type 'yes': "
        )
        if answer.strip().lower() != "yes":
            print("not uninstalled", file=sys.stderr)
            return 1
    with db.connect(target) as conn:
        db.require_primary(conn, "uninstall")
        result = uninstall(conn, force=args.force)
    for dependant in result.dropped_dependants:
        print(f"dropped (--force): {dependant}")
    if not result.schema_existed:
        print("pybatch schema was not installed; removed pybatch's migration bookkeeping if any")
    kept = (
        "dropped public.workspace_agents (pybatch created it)"
        if result.dropped_workspace_agents
        else "kept public.workspace_agents"
    )
    print(f"uninstalled: removed {result.jobs_removed} pg_cron job(s) and schema pybatch; {kept}")
    return 0
