"""Looking at pybatch: status, doctor, sql [migrations|inspect]."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pybatch import db, resources, status, status_document
from pybatch.cli.commands import COMMANDS
from pybatch.cli.common import bounded_int, dsn, invoked_as, print_json, print_table
from pybatch.errors import ConfigError

# `pybatch status` exit codes: a liveness probe needs only "0 or not".
EXIT_LATE = 3
EXIT_STALLED = 4
EXIT_BEHIND = 5  # flushes run on time but do not keep up (health "behind")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "status",
        help=COMMANDS["status"].help,
    )
    p.add_argument("--json", action="store_true", help="print one JSON document (keys: docs/status-json.md)")
    p.add_argument(
        "--flushes",
        type=bounded_int(0, 10_000),
        default=10,
        help="how many recent flushes to show, 0 to 10000 (default 10)",
    )
    p.set_defaults(handler=cmd_status)

    p = subparsers.add_parser("doctor", help=COMMANDS["doctor"].help)
    p.set_defaults(handler=cmd_doctor)

    p = subparsers.add_parser(
        "sql",
        help=COMMANDS["sql"].help,
        description="`pybatch sql` and `pybatch sql migrations` print the pending migrations without applying "
        "them; `pybatch sql inspect | pybatch psql` shows pybatch at a glance, from any directory.",
    )
    p.add_argument("--all", action="store_true", help="print every migration (needs no database)")
    p.set_defaults(handler=cmd_sql)
    what = p.add_subparsers(dest="sql_what", metavar="WHAT", required=False)
    sub = what.add_parser("migrations", help="the pending migrations (as plain `pybatch sql`)")
    sub.add_argument("--all", action="store_true", help="print every migration (needs no database)")
    sub.set_defaults(handler=cmd_sql)
    sub = what.add_parser(
        "inspect",
        help="the inspection queries (health, staging, flushes, agents) for psql; needs no database",
    )
    sub.set_defaults(handler=cmd_sql_inspect)


def cmd_status(args: argparse.Namespace) -> int:
    with db.connect(dsn(args)) as conn:
        state = status.status(conn, flushes=args.flushes)
    if args.json:
        print_json(status_document.as_json(state))
    else:
        _print_status(state)
    return {"ok": 0, "late": EXIT_LATE, "behind": EXIT_BEHIND}.get(state.health.status, EXIT_STALLED)


def _print_status(state: status.Status) -> None:
    health = state.health
    print(f"health: {health.status.upper()} - {health.reason}")
    if health.flush_lock_held_by:
        print(f"flush lock held by: {health.flush_lock_held_by}")
    if state.staleness is not None:
        measured = (
            f"measured worst staleness {_age(health.worst_staleness)}; " if health.worst_staleness is not None else ""
        )
        print(f"staleness: {measured}budget {state.staleness.verdict}: {state.staleness.reason}")
    if state.in_recovery:
        print("server: hot standby (staging figures are only on the primary)")
    staging = state.staging
    if staging.available:
        print_table(
            [
                {
                    "rows staged": staging.rows_staged,
                    "distinct agents": staging.distinct_agents,
                    "oldest beat age": _age(staging.oldest_beat_age),
                    "newest beat age": _age(staging.newest_beat_age),
                    "size": _size(staging.size_bytes),
                    "figures": staging.method,
                }
            ],
            title="staging",
        )
    else:
        print(f"staging: not available: {staging.reason}")
    if staging.pending_agents is not None:
        oldest = (
            f", oldest beat {_age(staging.oldest_pending_age)} old" if staging.oldest_pending_age is not None else ""
        )
        print(
            f"pending (handed off, not merged yet): {staging.pending_agents} agent(s), "
            f"{staging.deferred_agents} deferred (row locked){oldest}"
        )
    if staging.quarantined_agents:
        print(
            f"quarantine: {staging.quarantined_agents} agent(s) since "
            f"{staging.oldest_quarantined_at.isoformat(timespec='seconds') if staging.oldest_quarantined_at else '-'}"
            f", e.g. {staging.quarantine_sample_agent}: {staging.quarantine_sample_error} "
            "(retry now: SELECT pybatch.requeue_quarantined())"
        )
    print_table(
        [
            {
                "started at": f.started_at.isoformat(timespec="seconds"),
                "rows": f.rows_staged,
                "agents updated": f.agents_updated,
                "stale": f.stale_heartbeats,
                "unknown": f.unknown_heartbeats,
                "future": f.future_heartbeats,
                "passes": f.passes,
                "hot": f.hot_updates,
                "deferred": f.deferred_agents,
                "quarantined": f.quarantined_agents,
                "duration": _age(f.duration),
                "error": f.error,
            }
            for f in state.recent_flushes
        ],
        title="recent flushes",
    )
    counts: dict[str, Any] = dict(state.agents.by_status)
    counts["total"] = state.agents.total
    counts["newer beat staged"] = state.agents.newer_heartbeat_staged
    print_table([counts], title="agents")


def _age(value: Any) -> str:
    if value is None:
        return "-"
    seconds = value.total_seconds()
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else f"{seconds:.1f}s"


def _size(value: int | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1048576:.1f} MB" if value >= 1048576 else f"{value / 1024:.0f} kB"


def cmd_doctor(args: argparse.Namespace) -> int:
    with db.connect(dsn(args)) as conn:
        from pybatch import doctor  # imported here: it brings yoyo (migrate)

        report = doctor.doctor(conn)
    for check in report.checks:
        label = {"ok": "OK  ", "warn": "WARN", "fail": "FAIL", "skip": "SKIP"}[check.level]
        print(f"{label} {check.name}: {check.message}")
    return 0 if report.ok else 1


def cmd_sql(args: argparse.Namespace) -> int:
    from pybatch import migrate  # imported here: it brings yoyo

    # --all reads only the migration files: no database needed.
    if args.all:
        text = migrate.migration_sql(None, all_migrations=True)
    else:
        with db.connect(dsn(args)) as conn:
            text = migrate.migration_sql(conn)
    if text:
        sys.stdout.write(text)
    else:
        print("-- no pending migrations: the schema is up to date")
    return 0


def cmd_sql_inspect(args: argparse.Namespace) -> int:
    """The installed sql/inspect.sql, so `pybatch sql inspect | pybatch psql` works from any directory."""
    if args.all:
        raise ConfigError("--all applies to `pybatch sql migrations`, not to `pybatch sql inspect`")
    me = invoked_as()
    sys.stdout.write(f"-- pybatch inspection queries; run them with:  {me} sql inspect | {me} psql\n")
    sys.stdout.write(resources.read_sql("inspect.sql"))
    return 0
