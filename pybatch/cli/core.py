"""Core commands: migrate, flush, psql, uninstall."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from contextlib import ExitStack
from typing import Any

import psycopg

from pybatch import db, migrate
from pybatch.cli.commands import COMMANDS
from pybatch.cli.common import LANES_HELP, bounded_int, dsn, flag_or_env, invoked_as, lanes_count, print_json
from pybatch.durations import format_duration
from pybatch.errors import PybatchError
from pybatch.flush import flush_in_lanes
from pybatch.schedule import cron
from pybatch.settings import COUNT_BOUNDS
from pybatch.uninstall import plan as uninstall_plan
from pybatch.uninstall import uninstall

# `pybatch flush`: another flush held the lock, nothing was done (distinct from 0 and errors).
EXIT_SKIPPED = 3
MAX_ROWS_LOW, MAX_ROWS_HIGH = COUNT_BOUNDS["max_rows_per_flush"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("migrate", help=COMMANDS["migrate"].help)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--status", action="store_true", help="list applied and pending migrations")
    group.add_argument("--rollback", action="store_true", help="undo the last applied migration")
    p.set_defaults(handler=cmd_migrate)

    p = subparsers.add_parser("flush", help=COMMANDS["flush"].help)
    p.add_argument(
        "--max-rows",
        type=bounded_int(MAX_ROWS_LOW, MAX_ROWS_HIGH),
        default=None,
        help=f"drain at most this many staged rows, {MAX_ROWS_LOW} to {MAX_ROWS_HIGH} "
        "(default: settings.max_rows_per_flush)",
    )
    p.add_argument("--lanes", type=lanes_count, default=None, help=LANES_HELP)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=cmd_flush)

    p = subparsers.add_parser(
        "psql",
        help=COMMANDS["psql"].help,
    )
    p.add_argument("psql_args", nargs=argparse.REMAINDER, help="extra arguments for psql")
    p.set_defaults(handler=cmd_psql)

    p = subparsers.add_parser(
        "uninstall",
        help=COMMANDS["uninstall"].help,
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
            for routine in migrate.routine_status(conn):
                if routine.out_of_date:
                    print(f"{routine.state:<8} sql/{routine.source.path}  ({routine.source.name})")
            return 0
        if args.rollback:
            removed: list[str] = []
            interval: list[float | None] = []
            rolled = migrate.rollback(conn, before=lambda: _remove_jobs(conn, removed, interval))
            print(f"rolled back {rolled}" if rolled else "nothing to roll back")
            if removed:
                again = f" --interval {format_duration(interval[0])}" if interval and interval[0] else ""
                print(
                    f"removed pg_cron job(s) {', '.join(removed)} (they would call what the rollback dropped); "
                    f"to restore them: `{invoked_as()} migrate`, then `{invoked_as()} cron install{again}`"
                )
            return 0
        applied = migrate.apply(conn, progress=lambda step: print(f"applying {step} ...", file=sys.stderr))
        unscheduled = bool(applied.migrations or applied.routines) and _no_flush_job(conn)
    done = []
    if applied.migrations:
        done.append(f"{len(applied.migrations)} migration(s): {', '.join(applied.migrations)}")
    if applied.routines:
        done.append(f"{len(applied.routines)} routine and view source(s)")
    print(f"applied {'; '.join(done)}" if done else "schema is up to date")
    if unscheduled:
        print(
            f"nothing schedules the flush in this database yet: `{invoked_as()} cron install` "
            f"(or run `{invoked_as()} scheduler`)"
        )
    return 0


def _remove_jobs(conn: psycopg.Connection, removed: list[str], interval: list[float | None]) -> None:
    """Remove pybatch's pg_cron jobs for this database before its schema goes, noting their
    names and the flush job's interval, to say what to run to restore them."""
    try:
        job = cron.installed_job(conn)
    except PybatchError:
        job = None
    interval.append(cron.job_interval(job) if job is not None else None)
    _, names = cron.job_names(conn)
    cron.remove(conn)
    removed.extend(names)


def _no_flush_job(conn: psycopg.Connection) -> bool:
    """Whether pg_cron is here and holds no flush job for this database (a job removed by a
    rollback, or never installed). False where pg_cron is absent: nothing to say then."""
    try:
        cron_database, _ = cron.job_names(conn)
        return cron_database is not None and cron.installed_job(conn) is None
    except PybatchError:
        return False


def cmd_flush(args: argparse.Namespace) -> int:
    lanes = flag_or_env(args.lanes, "PYBATCH_LANES", lanes_count) or 1
    target = dsn(args)
    with ExitStack() as stack:
        conns = [stack.enter_context(db.connect(target)) for _ in range(lanes)]
        db.require_primary(conns[0], "flush")
        result = flush_in_lanes(conns, max_rows=args.max_rows, raise_on_error=True)
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
    with db.connect(dsn(args)) as conn:
        db.require_primary(conn, "uninstall")
        found = uninstall_plan(conn)
        print(f"pybatch uninstall: from database {found.database!r} on {found.server}, this removes:")
        for line in found.lines():
            print(line)
        if found.kept_workspace_agents is not None:
            print(f"  (kept: public.workspace_agents, {found.kept_workspace_agents} row(s); pybatch did not create it)")
        if not args.yes:
            if not sys.stdin.isatty():
                raise PybatchError(
                    "uninstall asks for confirmation and stdin is not a terminal: pass --yes (nothing was removed)"
                )
            answer = input(f"Remove them from database {found.database!r}? Type 'yes': ")
            if answer.strip().lower() != "yes":
                print("not uninstalled", file=sys.stderr)
                return 1
        # Progress on stdout, with the plan: stderr keeps to the one line of an error.
        result = uninstall(conn, force=args.force, progress=lambda line: print(f"{line} ...", flush=True))
    for dependant in result.dropped_dependants:
        print(f"dropped (--force): {dependant}")
    if not result.schema_existed:
        print("pybatch schema was not installed; removed pybatch's migration bookkeeping if any")
    kept = (
        "dropped public.workspace_agents (pybatch created it)"
        if result.dropped_workspace_agents
        else "kept public.workspace_agents"
    )
    print(
        f"uninstalled from database {found.database!r}: removed {result.jobs_removed} pg_cron job(s) "
        f"and schema pybatch; {kept}"
    )
    return 0
