"""`pybatch config show|set`: the settings in pybatch.settings."""

from __future__ import annotations

import argparse
from datetime import timedelta
from typing import Any

from pybatch import db, settings, status_document
from pybatch.cli.commands import COMMANDS
from pybatch.cli.common import dsn, print_json, print_table
from pybatch.errors import ConfigError
from pybatch.schedule import cron


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("config", help=COMMANDS["config"].help)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="print the settings")
    show.add_argument("--json", action="store_true", help="print them as JSON")
    show.set_defaults(handler=cmd_config_show)
    setter = actions.add_parser(
        "set",
        help=f"change one setting: {', '.join(settings.SETTABLE)} (durations: 500ms, 10s, 1m, 2h, 7d or "
        "seconds; max_rows_per_flush: a number or `unlimited`; ranges: " + _ranges() + ")",
    )
    setter.add_argument("key", help="the setting to change")
    setter.add_argument("value", help="its new value")
    setter.set_defaults(handler=cmd_config_set)


def _ranges() -> str:
    return ", ".join(
        f"{key} {settings.format_setting(key, low)}-{settings.format_setting(key, high)}"
        for key, (low, high) in settings.SETTING_BOUNDS.items()
    )


def cmd_config_show(args: argparse.Namespace) -> int:
    with db.connect(dsn(args)) as conn:
        current = settings.read_settings(conn)
    if args.json:
        print_json(status_document.settings_as_json(current))
    else:
        # Values as `config set` takes them back: 10s, 7d, unlimited; only what it takes.
        print_table(
            [
                {"setting": key, "value": settings.format_setting(key, value)}
                for key, value in vars(current).items()
                if key in settings.SETTABLE
            ]
        )
        print(f"({RECORD_NOTE.format(value=str(current.created_workspace_agents).lower())})")
    return 0


# pybatch.settings.created_workspace_agents: a fact pybatch records at migrate, not a setting.
RECORD = "created_workspace_agents"
RECORD_NOTE = (
    RECORD + " = {value}: recorded by `pybatch migrate`, not a setting (true: pybatch created "
    "public.workspace_agents, so `pybatch uninstall` drops it; false: it keeps it)"
)


def cmd_config_set(args: argparse.Namespace) -> int:
    if args.key.strip().lower().replace("-", "_") == RECORD:
        raise ConfigError(
            f"{RECORD} is not a setting: `pybatch migrate` records whether pybatch created public.workspace_agents "
            f"(`pybatch uninstall` drops the table only then); settings: {', '.join(settings.SETTABLE)}"
        )
    column, parsed = settings.parse_setting(args.key, args.value)  # a bad key or value fails before connecting
    with db.connect(dsn(args)) as conn:
        db.require_primary(conn, "config set")
        job = cron.installed_job(conn) if column == "flush_interval" else None
        if job is not None:
            # The pg_cron job must flush at the interval health judges lateness by: reschedule it
            # (cron install checks the interval, stores it and refuses as one step).
            assert isinstance(parsed, timedelta)
            cron.install(conn, parsed.total_seconds(), force_loop=job.mode == "loop")
            print(f"rescheduled pg_cron job {job.name} to flush every {settings.format_setting(column, parsed)}")
        stored = settings.set_setting(conn, column, args.value) if job is None else settings.read_settings(conn)
    print(f"{column} = {settings.format_setting(column, getattr(stored, column))}")
    return 0
