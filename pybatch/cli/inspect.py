"""Inspection and operations: status, doctor, sql [migrations|inspect], uninstall, config show|set."""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta
from typing import Any

from pybatch import db, doctor, inspect, migrate, resources
from pybatch.cli.common import bounded_int, dsn, invoked_as, print_json, print_table
from pybatch.errors import ConfigError
from pybatch.schedule import cron
from pybatch.uninstall import uninstall

# `pybatch status` exit codes: a liveness probe needs only "0 or not".
EXIT_LATE = 3
EXIT_STALLED = 4
EXIT_BEHIND = 5  # flushes run on time but do not keep up (health "behind")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "status", help="health, staging, recent flushes and agents by status (exit 0 only when health is ok)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document (keys: docs/status-json.md)")
    p.add_argument("--flushes", type=bounded_int(0, 10_000), default=10,
                   help="how many recent flushes to show, 0 to 10000 (default 10)")
    p.set_defaults(handler=cmd_status)

    p = subparsers.add_parser("doctor", help="check the installation, one line per check (exit 1 if any fails)")
    p.set_defaults(handler=cmd_doctor)

    p = subparsers.add_parser(
        "sql", help="print SQL: the pending migrations (the default), or the inspection queries for psql",
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
        "inspect", help="the inspection queries (health, staging, flushes, agents) for psql; needs no database",
    )
    sub.set_defaults(handler=cmd_sql_inspect)

    p = subparsers.add_parser(
        "uninstall",
        help="remove pybatch's pg_cron job, schema and migration tables (a workspace_agents it did not create stays)",
    )
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--force", action="store_true",
                   help="also drop objects of others that depend on pybatch's (views, columns of its types, ...); "
                        "without it uninstall lists them and refuses")
    p.set_defaults(handler=cmd_uninstall)

    p = subparsers.add_parser("config", help="show or change the settings stored in pybatch.settings")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="print the settings")
    show.add_argument("--json", action="store_true", help="print them as JSON")
    show.set_defaults(handler=cmd_config_show)
    setter = actions.add_parser(
        "set", help=f"change one setting: {', '.join(inspect.SETTABLE)} (durations: 500ms, 10s, 1m, 2h, 7d or "
                    "seconds; max_rows_per_flush: a number or `unlimited`; ranges: " + _ranges() + ")",
    )
    setter.add_argument("key", help="the setting to change")
    setter.add_argument("value", help="its new value")
    setter.set_defaults(handler=cmd_config_set)


def _ranges() -> str:
    return ", ".join(f"{key} {inspect.format_setting(key, low)}-{inspect.format_setting(key, high)}"
                     for key, (low, high) in inspect.SETTING_BOUNDS.items())


def cmd_status(args: argparse.Namespace) -> int:
    with db.connect(dsn(args)) as conn:
        state = inspect.status(conn, flushes=args.flushes)
    if args.json:
        print_json(state.as_json())
    else:
        _print_status(state)
    return {"ok": 0, "late": EXIT_LATE, "behind": EXIT_BEHIND}.get(state.health.status, EXIT_STALLED)


def _print_status(state: inspect.Status) -> None:
    health = state.health
    print(f"health: {health.status.upper()} - {health.reason}")
    if health.flush_lock_held_by:
        print(f"flush lock held by: {health.flush_lock_held_by}")
    if state.staleness is not None:
        measured = f"measured worst staleness {_age(health.worst_staleness)}; " \
            if health.worst_staleness is not None else ""
        print(f"staleness: {measured}budget {state.staleness.verdict}: {state.staleness.reason}")
    if state.in_recovery:
        print("server: hot standby (staging figures are only on the primary)")
    staging = state.staging
    if staging.available:
        print_table([{
            "rows staged": staging.rows_staged,
            "distinct agents": staging.distinct_agents,
            "oldest beat age": _age(staging.oldest_beat_age),
            "newest beat age": _age(staging.newest_beat_age),
            "size": _size(staging.size_bytes),
            "figures": staging.method,
        }], title="staging")
    else:
        print(f"staging: not available: {staging.reason}")
    if staging.pending_agents is not None:
        print(f"pending (handed off, not merged yet): {staging.pending_agents} agent(s), "
              f"{staging.deferred_agents} deferred (row locked), oldest beat {_age(staging.oldest_pending_age)} old")
    if staging.quarantined_agents:
        print(f"quarantine: {staging.quarantined_agents} agent(s) since "
              f"{staging.oldest_quarantined_at.isoformat(timespec='seconds') if staging.oldest_quarantined_at else '-'}"
              f", e.g. {staging.quarantine_sample_agent}: {staging.quarantine_sample_error} "
              "(retry now: SELECT pybatch.requeue_quarantined())")
    print_table([{
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
    } for f in state.recent_flushes], title="recent flushes")
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
    report = doctor.doctor(dsn(args))
    for check in report.checks:
        label = {"ok": "OK  ", "warn": "WARN", "fail": "FAIL"}[check.level]
        print(f"{label} {check.name}: {check.message}")
    return 0 if report.ok else 1


def cmd_sql(args: argparse.Namespace) -> int:
    # --all reads only the migration files: no database needed.
    text = migrate.migration_sql(None if args.all else dsn(args), all_migrations=args.all)
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


def cmd_uninstall(args: argparse.Namespace) -> int:
    target = dsn(args)
    if not args.yes:
        if not sys.stdin.isatty():
            raise ConfigError("uninstall asks for confirmation and stdin is not a terminal: pass --yes")
        answer = input("Remove pybatch (its pg_cron job, schema pybatch and staged heartbeats) from this database? "
                       "Type 'yes': ")
        if answer.strip().lower() != "yes":
            print("not uninstalled", file=sys.stderr)
            return 1
    result = uninstall(target, force=args.force)
    for dependant in result.dropped_dependants:
        print(f"dropped (--force): {dependant}")
    if not result.schema_existed:
        print("pybatch schema was not installed; removed pybatch's migration bookkeeping if any")
    kept = "dropped public.workspace_agents (pybatch created it)" if result.dropped_workspace_agents \
        else "kept public.workspace_agents"
    print(f"uninstalled: removed {result.jobs_removed} pg_cron job(s) and schema pybatch; {kept}")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    with db.connect(dsn(args)) as conn:
        settings = inspect.read_settings(conn)
    if args.json:
        print_json(inspect.settings_as_json(settings))
    else:
        # Values as `config set` takes them back: 10s, 7d, unlimited.
        print_table([{"setting": key, "value": inspect.format_setting(key, value)}
                     for key, value in vars(settings).items()])
    return 0


def cmd_config_set(args: argparse.Namespace) -> int:
    column, parsed = inspect.parse_setting(args.key, args.value)  # a bad key or value fails before connecting
    target = dsn(args)
    job = cron.installed_job(target) if column == "flush_interval" else None
    if job is not None:
        # The pg_cron job must flush at the interval health judges lateness by: reschedule it
        # (cron install checks the interval, stores it and refuses as one step).
        assert isinstance(parsed, timedelta)
        cron.install(target, parsed.total_seconds(), force_loop=job.mode == "loop")
        print(f"rescheduled pg_cron job {job.name} to flush every {inspect.format_setting(column, parsed)}")
    with db.connect(target) as conn:
        settings = inspect.set_setting(conn, column, args.value) if job is None else inspect.read_settings(conn)
    print(f"{column} = {inspect.format_setting(column, getattr(settings, column))}")
    return 0
