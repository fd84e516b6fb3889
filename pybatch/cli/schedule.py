"""`pybatch cron install|remove|status` and `pybatch scheduler`."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

from pybatch.cli.common import dsn, print_json
from pybatch.durations import format_duration, parse_duration
from pybatch.errors import ConfigError, InvalidDuration
from pybatch.schedule import cron, runner

EXIT_NOT_INSTALLED = 3


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("cron", help="schedule the flush with pg_cron (install, remove, status)")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    sub = actions.add_parser("install", help="create or update this database's pg_cron flush job")
    sub.add_argument("--interval", type=_duration, default=None,
                     help="flush interval, whole seconds 1s-59s or minutes dividing an hour; stored in "
                          "pybatch.settings.flush_interval (env: PYBATCH_INTERVAL; default: the stored interval)")
    sub.add_argument("--force-loop", action="store_true",
                     help="use the per-minute flush loop even where pg_cron >= 1.5 has seconds schedules")
    sub.set_defaults(handler=cmd_install)

    sub = actions.add_parser("remove", help="remove this database's pg_cron jobs and end a running flush loop")
    sub.set_defaults(handler=cmd_remove)

    sub = actions.add_parser("status", help="show the job, its last runs and the age of the last flush "
                                            "(exit 1 when the job fails, 3 when none is installed)")
    sub.add_argument("--json", action="store_true", help="print the status as JSON")
    sub.set_defaults(handler=cmd_status)

    p = subparsers.add_parser("scheduler", help="run the flush every interval in this process (leader-elected)")
    p.add_argument("--interval", type=_duration, default=None,
                   help="flush interval, e.g. 10s; stored in pybatch.settings.flush_interval "
                        "(env: PYBATCH_INTERVAL; default: the stored interval)")
    p.add_argument("--metrics-port", type=_port, default=None,
                   help="serve Prometheus metrics on this port (env: PYBATCH_METRICS_PORT; default: off)")
    p.set_defaults(handler=cmd_scheduler)


def _duration(text: str) -> float:
    try:
        return parse_duration(text, name="--interval")
    except InvalidDuration as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)")
    return int(text)


def _flag_or_env(value: Any, name: str, convert: Callable[[str], Any]) -> Any:
    """The flag's value, else the environment variable's (an error names the variable)."""
    if value is not None or not os.environ.get(name):
        return value
    try:
        return convert(os.environ[name])
    except argparse.ArgumentTypeError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def cmd_install(args: argparse.Namespace) -> int:
    target = dsn(args)
    interval = _flag_or_env(args.interval, "PYBATCH_INTERVAL", _duration)
    if interval is None:
        interval = cron.stored_interval(target)
    job = cron.install(target, interval, force_loop=args.force_loop)
    print(f"installed {job.name} (job {job.jobid}, {job.mode}): schedule {job.schedule!r} "
          f"in database {job.database}, every {format_duration(interval)}")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    removed = cron.remove(dsn(args))
    print(f"removed {removed} pg_cron job(s)")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    state = cron.status(dsn(args))
    if args.json:
        print_json(state.as_dict())
    else:
        _print_status(state)
    if state.error is not None:
        raise state.error
    return 0 if state.job is not None else EXIT_NOT_INSTALLED


def _print_status(state: cron.CronStatus) -> None:
    print(f"pg_cron {state.pg_cron_version} in database {state.cron_database}; "
          f"configured interval {format_duration(state.configured_interval)}")
    if state.job is None:
        print(f"no pg_cron job for database {state.database}: run `pybatch cron install`")
    else:
        job = state.job
        print(f"job {job.name} (id {job.jobid}, {job.mode}, {'active' if job.active else 'inactive'}): "
              f"{job.schedule!r} as {job.username}: {job.command}")
    if state.purge_job is not None:
        print(f"purge job {state.purge_job.name}: {state.purge_job.schedule!r}")
    age = "never" if state.last_flush_age is None else f"{state.last_flush_age:.1f}s ago"
    print(f"last successful flush: {age}")
    for run in state.runs:
        print(f"  run {run.runid}  {run.status or '?':9}  {run.start_time or '-'}  {run.return_message or ''}")


def cmd_scheduler(args: argparse.Namespace) -> int:
    interval = _flag_or_env(args.interval, "PYBATCH_INTERVAL", _duration)
    port = _flag_or_env(args.metrics_port, "PYBATCH_METRICS_PORT", _port)
    runner.run_scheduler(dsn(args), interval=interval, metrics_port=port)
    return 0
