"""Core commands: migrate, flush, psql."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from typing import Any

from pybatch import db, migrate
from pybatch.cli.common import bounded_int, dsn, print_json
from pybatch.errors import PybatchError
from pybatch.flush import flush
from pybatch.inspect import COUNT_BOUNDS
from pybatch.schedule import cron

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


def cmd_migrate(args: argparse.Namespace) -> int:
    target = dsn(args)
    if args.status:
        for state in migrate.status(target):
            print(f"{'applied' if state.applied else 'pending'}  {state.id}")
        return 0
    if args.rollback:
        rolled = migrate.rollback(target, before=lambda: _remove_jobs(target))
        print(f"rolled back {rolled}" if rolled else "nothing to roll back")
        return 0
    applied = migrate.apply(target, progress=lambda mid: print(f"applying {mid} ...", file=sys.stderr))
    print(f"applied {len(applied)} migration(s): {', '.join(applied)}" if applied else "schema is up to date")
    return 0


def _remove_jobs(target: str) -> None:
    """Remove pybatch's pg_cron jobs for this database before its schema goes."""
    cron.remove(target)


def cmd_flush(args: argparse.Namespace) -> int:
    with db.connect(dsn(args)) as conn:
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
