"""`pybatch cron install|remove|status` and `pybatch scheduler`."""

from __future__ import annotations

import argparse
import errno
import logging
import socket
from datetime import UTC, datetime, timedelta
from typing import Any

from pybatch import db
from pybatch.cli.commands import COMMANDS
from pybatch.cli.common import LANES_HELP, dsn, flag_or_env, lanes_count, print_json, resolved_dsn
from pybatch.config import describe_dsn
from pybatch.durations import format_duration, parse_timedelta, well_formed
from pybatch.errors import ConfigError, InvalidDuration, InvalidSetting
from pybatch.schedule import cron
from pybatch.settings import DURATION_BOUNDS, check_duration

EXIT_NOT_INSTALLED = 3
# The logger the scheduler's lifecycle lines come from (logged under pybatch.schedule.scheduler).
log = logging.getLogger("pybatch.schedule")
LOW, HIGH = (format_duration(bound) for bound in DURATION_BOUNDS["flush_interval"])


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("cron", help=COMMANDS["cron"].help)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    sub = actions.add_parser("install", help="create or update this database's pg_cron flush job")
    sub.add_argument(
        "--interval",
        type=_duration,
        default=None,
        help=f"flush interval, whole seconds 1s-59s or minutes dividing an hour ({LOW} to {HIGH}); "
        "stored in pybatch.settings.flush_interval "
        "(env: PYBATCH_INTERVAL; default: the stored interval)",
    )
    sub.add_argument(
        "--force-loop",
        action="store_true",
        help="use the per-minute flush loop even where pg_cron >= 1.5 has seconds schedules",
    )
    sub.set_defaults(handler=cmd_install)

    sub = actions.add_parser("remove", help="remove this database's pg_cron jobs and end a running flush loop")
    sub.set_defaults(handler=cmd_remove)

    sub = actions.add_parser(
        "status",
        help="show the job, its last runs and the age of the last flush "
        "(exit 1 when the job fails, 3 when none is installed)",
    )
    sub.add_argument("--json", action="store_true", help="print the status as JSON")
    sub.set_defaults(handler=cmd_status)

    p = subparsers.add_parser(
        "scheduler",
        help=COMMANDS["scheduler"].help,
    )
    p.add_argument(
        "--interval",
        type=_duration,
        default=None,
        help=f"flush interval, e.g. 10s ({LOW} to {HIGH}); stored in pybatch.settings.flush_interval "
        "(env: PYBATCH_INTERVAL; default: the stored interval)",
    )
    p.add_argument(
        "--metrics-port",
        type=_port,
        default=None,
        help="serve Prometheus metrics on this port (env: PYBATCH_METRICS_PORT; default: off)",
    )
    p.add_argument(
        "--lanes",
        type=lanes_count,
        default=None,
        help=LANES_HELP,
    )
    p.set_defaults(handler=cmd_scheduler, setup_logging=setup_scheduler_logging)


def _duration(text: str) -> float:
    """argparse type of --interval: a duration within flush_interval's bounds (1s to 1h), in seconds.
    The message leaves out the option's name: argparse (or _flag_or_env) puts it in front."""
    try:
        value = parse_timedelta(text, name="")
        return check_duration("flush_interval", value, text).total_seconds()
    except (InvalidSetting, InvalidDuration) as exc:
        if isinstance(exc, InvalidSetting) or well_formed(text):  # a duration, but too short or too long
            raise argparse.ArgumentTypeError(
                f"{text!r} is out of range: the flush interval must be between {LOW} and {HIGH}"
            ) from None
        raise argparse.ArgumentTypeError(str(exc)) from None


def _port(text: str) -> int:
    stripped = text.strip()
    if not (stripped.isascii() and stripped.isdigit()) or not 0 < int(stripped) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)")
    return int(stripped)


def _check_port_free(port: int, origin: str) -> None:
    """Fail before starting when the metrics port cannot be served (in use, or privileged):
    the same bind that prometheus_client's server makes (all IPv4 addresses, SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
        except OSError as exc:
            reason = "it is already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
            raise ConfigError(f"{origin}: cannot serve metrics on port {port}: {reason}") from None


def cmd_install(args: argparse.Namespace) -> int:
    target = dsn(args)
    interval = flag_or_env(args.interval, "PYBATCH_INTERVAL", _duration)
    with db.connect(target) as conn:
        db.require_primary(conn, "cron install")
        if interval is None:
            interval = cron.stored_interval(conn)
        job = cron.install(conn, interval, force_loop=args.force_loop)
        row = conn.execute("SELECT pg_catalog.clock_timestamp()").fetchone()  # pg_cron runs on the server's clock
    print(
        f"installed {job.name} (job {job.jobid}, {job.mode}): schedule {job.schedule!r} "
        f"in database {job.database}, every {format_duration(interval)}"
    )
    if row is not None:
        print(first_run_note(job.mode, job.schedule, interval, row[0]))
    return 0


def first_run_note(mode: str, schedule: str, interval: float, now: datetime) -> str:
    """When the job first runs: a seconds schedule within one interval; a minute schedule (and
    pg_cron 1.4's loop, started every minute) at the next matching minute, up to 60 s away."""
    if mode == "seconds":
        return f"first run: within {format_duration(interval)}; `pybatch cron status` shows it"
    fields = schedule.split()
    step = 60 if fields[:1] == ["0"] else int(fields[0][2:]) if fields[0].startswith("*/") else 1
    start = now.replace(second=0, microsecond=0)
    minutes = start.hour * 60 + start.minute
    due = start + timedelta(minutes=step - minutes % step)
    then = "; from then on the loop flushes every " + format_duration(interval) if mode == "loop" else ""
    return (
        f"first run: at {due.astimezone(UTC):%H:%M:%S} UTC, in {(due - now).total_seconds():.0f}s "
        f"(pg_cron starts {schedule!r} on the minute){then}; until then `pybatch cron status` says 'never'"
    )


def cmd_remove(args: argparse.Namespace) -> int:
    with db.connect(dsn(args)) as conn:
        db.require_primary(conn, "cron remove")
        removed = cron.remove(conn)
    print(f"removed {removed} pg_cron job(s)")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    with db.connect(dsn(args)) as conn:
        state = cron.status(conn)
    if args.json:
        print_json(state.as_dict())
    else:
        _print_status(state)
    if state.error is not None:
        raise state.error
    return 0 if state.job is not None else EXIT_NOT_INSTALLED


def _print_status(state: cron.CronStatus) -> None:
    print(
        f"pg_cron {state.pg_cron_version} in database {state.cron_database}; "
        f"configured interval {format_duration(state.configured_interval)}"
    )
    if state.job is None:
        print(f"no pg_cron job for database {state.database}: run `pybatch cron install`")
    else:
        job = state.job
        print(
            f"job {job.name} (id {job.jobid}, {job.mode}, {'active' if job.active else 'inactive'}): "
            f"{job.schedule!r} as {job.username}: {job.command}"
        )
    if state.purge_job is not None:
        print(f"purge job {state.purge_job.name}: {state.purge_job.schedule!r}")
    age = "never" if state.last_flush_age is None else f"{state.last_flush_age:.1f}s ago"
    print(f"last successful flush: {age}")
    for run in state.runs:
        print(f"  run {run.runid}  {run.status or '?':9}  {run.start_time or '-'}  {run.return_message or ''}")


def cmd_scheduler(args: argparse.Namespace) -> int:
    interval = flag_or_env(args.interval, "PYBATCH_INTERVAL", _duration)
    port = flag_or_env(args.metrics_port, "PYBATCH_METRICS_PORT", _port)
    lanes = flag_or_env(args.lanes, "PYBATCH_LANES", lanes_count) or 1
    if port is not None:
        _check_port_free(port, "--metrics-port" if args.metrics_port is not None else "PYBATCH_METRICS_PORT")
    target = resolved_dsn(args)
    origin = "--interval" if args.interval is not None else "PYBATCH_INTERVAL"
    interval_text = (
        "the stored pybatch.settings.flush_interval" if interval is None else f"{format_duration(interval)} ({origin})"
    )
    log.info(
        "scheduler starting on %s (from %s): interval %s, %s, metrics %s; it leads (flushes) or stands by, "
        "and says which",
        describe_dsn(target.dsn),
        target.source,
        interval_text,
        "1 lane" if lanes == 1 else f"{lanes} lanes",
        "off" if port is None else f"on port {port}",
    )
    from pybatch.schedule import scheduler  # imported here: it brings prometheus_client

    scheduler.run_scheduler(target.dsn, interval=interval, metrics_port=port, lanes=lanes)
    return 0


class LifecycleFilter(logging.Filter):
    """Shows the scheduler's lifecycle at the default log level: one line per change of leadership.

    The runner logs "became leader", "standing by" (at INFO, or at DEBUG every interval in older
    runners) and "lost the scheduler lease ...; standing by" (a warning). This passes each change
    between leading and standing by once, at INFO at least, and drops the runner's own start lines
    ("scheduler started", "serving metrics"), which the CLI's start line already covers."""

    REDUNDANT = frozenset({"scheduler started", "serving metrics"})

    def __init__(self, user_level: int) -> None:
        super().__init__()
        self.user_level = user_level
        self.state: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("pybatch.schedule"):
            return True
        message = str(record.msg)
        if message.startswith("standing by"):
            if self.state == "standby":
                return record.levelno >= self.user_level
            self.state = "standby"
            record.levelno, record.levelname = logging.INFO, "INFO"
            return True
        if message.startswith("became leader"):
            self.state = "leader"
        elif message.startswith("lost the scheduler lease"):
            self.state = "standby"  # the warning says so; the "standing by" after it adds nothing
        if record.levelno == logging.INFO and message in self.REDUNDANT and self.user_level > logging.DEBUG:
            return False
        return record.levelno >= min(self.user_level, logging.INFO)


def setup_scheduler_logging(args: argparse.Namespace) -> None:
    """At the default level (warning) and below, log pybatch.schedule's lifecycle at INFO."""
    user_level = logging.getLogger().getEffectiveLevel()
    if user_level > logging.WARNING:  # --log-level error: the user asked for errors only
        return
    logging.getLogger("pybatch.schedule").setLevel(min(user_level, logging.INFO))
    lifecycle = LifecycleFilter(user_level)
    for handler in logging.getLogger().handlers:
        handler.addFilter(lifecycle)
