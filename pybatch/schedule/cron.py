"""Schedule pybatch.flush() with pg_cron: install, remove and inspect this database's jobs.

pg_cron lives in the database named by `cron.database_name` (usually `postgres`),
so every job is created there with `cron.schedule_in_database` and runs in the
app database over a libpq connection. Jobs are named after the app database
(`pybatch-flush-<db>`, `pybatch-purge-<db>`) so many databases share one server.

- pg_cron 1.5+: a `'N seconds'` schedule running `CALL pybatch.flush_in_passes()`.
- pg_cron 1.4 (or force_loop): a per-minute job running `CALL pybatch.flush_loop(N)`,
  which flushes every N seconds and returns before the next minute (migration 0002).
- Whole minutes that divide an hour: a plain cron schedule running `CALL pybatch.flush_in_passes()`.

pg_cron never cleans `cron.job_run_details`; the `pybatch-purge-<db>` job deletes
pybatch's own rows there once an hour, keeping RUN_HISTORY of them.

Every operation takes the caller's autocommit connection to the app database. pg_cron's
database is reached through that same connection when it is the app database, else through
one session derived from it (db.connect_like), closed before the operation returns.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from pybatch import db
from pybatch.durations import format_duration
from pybatch.errors import CronError, NotMigrated, PermissionDenied, PybatchError
from pybatch.grants import FLUSH_ROUTINES
from pybatch.settings import read_flush_settings, require_staleness_budget, store_setting
from pybatch.status import installed

log = logging.getLogger(__name__)

FLUSH_JOB_PREFIX = "pybatch-flush-"
# One CALL, so pg_cron lets the procedure commit between passes.
FLUSH_COMMAND = "CALL pybatch.flush_in_passes()"
PURGE_JOB_PREFIX = "pybatch-purge-"
# Set by pybatch.flush_loop_deadline() so remove() can find and end a running loop.
LOOP_APPLICATION_NAME = "pybatch-flush-loop"
# How long pybatch keeps its own jobs' rows in cron.job_run_details.
RUN_HISTORY = timedelta(days=1)
# Failed connection attempts carry no timestamps in job_run_details; keep only
# those within this many run ids of the job's newest run.
TIMELESS_RUNS_KEPT = 1000
RECENT_RUNS = 10
SECONDS_SCHEDULES_SINCE = (1, 5)
SCHEDULE_IN_DATABASE = "cron.schedule_in_database(text,text,text,text,text,boolean)"
DEFAULT_CRON_DATABASE = "postgres"  # pg_cron's default cron.database_name
HINT = "or run `pybatch scheduler`"
# pg_cron writes this as return_message when the job's libpq connection fails
# (pg_hba rejection, failed authentication, unreachable cron.host).
CONNECTION_FAILED = "connection failed"
# cron.host as a role without pg_read_all_settings sees it (pg_settings hides it).
HIDDEN_CRON_HOST = "localhost unless set otherwise; reading it needs pg_read_all_settings"
# pg_cron's own error when its library is loaded any other way (role cannot see the setting).
PRELOAD_ERROR = "can only be loaded via shared_preload_libraries"
# pg_cron marks a run that a restart, crash or failover interrupted with this return_message:
# it says nothing about the job's health.
RESTARTED = "server restarted"


@dataclass(frozen=True)
class JobPlan:
    """What pg_cron should run: mode is 'seconds', 'loop' or 'minutes'."""

    mode: str
    schedule: str
    command: str


@dataclass(frozen=True)
class CronJob:
    jobid: int
    name: str
    schedule: str
    command: str
    database: str
    username: str
    active: bool
    # Where pg_cron connects to run it (libpq mode): cron.host and the port when it was scheduled.
    nodename: str | None = None
    nodeport: int | None = None

    @property
    def mode(self) -> str:
        if "flush_loop" in self.command:
            return "loop"
        if self.schedule.endswith("seconds"):
            return "seconds"
        if self.name.startswith(PURGE_JOB_PREFIX):
            return "purge"
        return "minutes"


@dataclass(frozen=True)
class CronRun:
    runid: int
    status: str | None
    return_message: str | None
    start_time: datetime | None
    end_time: datetime | None


@dataclass
class CronStatus:
    database: str
    cron_database: str
    pg_cron_version: str
    configured_interval: float
    job: CronJob | None
    purge_job: CronJob | None
    runs: list[CronRun] = field(default_factory=list)
    last_flush_at: datetime | None = None
    last_flush_age: float | None = None  # seconds since the last successful flush ended
    error: CronError | None = None
    # This server as pg_cron's jobs must name it (cron.host, port), and whether jobs run as
    # background workers (cron.use_background_workers: no libpq connection, node ignored).
    server_node: tuple[str, int] | None = None
    background_workers: bool = False

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["error"] = str(self.error) if self.error else None
        for key in ("job", "purge_job"):
            job = getattr(self, key)
            if job is not None:
                data[key]["mode"] = job.mode
        return data


@dataclass(frozen=True)
class _Target:
    """The app database and where its pg_cron lives."""

    database: str
    user: str
    cron_database: str | None  # None: pg_cron is not loaded on this server
    pg_cron_available: bool
    server: str

    def not_preloaded(self) -> CronError:
        return CronError(
            f"pg_cron is not in shared_preload_libraries on server {self.server}: add it "
            f"(shared_preload_libraries = 'pg_cron'), restart PostgreSQL, {HINT}"
        )


def flush_job_name(database: str) -> str:
    return f"{FLUSH_JOB_PREFIX}{database}"


def purge_job_name(database: str) -> str:
    return f"{PURGE_JOB_PREFIX}{database}"


def parse_version(text: str) -> tuple[int, int]:
    """pg_cron's extversion ('1.4-1', '1.6') as (major, minor)."""
    match = re.match(r"^(\d+)\.(\d+)", text)
    if not match:
        raise CronError(f"cannot read the pg_cron version {text!r}")
    return int(match.group(1)), int(match.group(2))


def plan_job(interval_seconds: float, version: tuple[int, int], *, force_loop: bool = False) -> JobPlan:
    """Turn an interval into a pg_cron schedule and command, or raise CronError naming the interval."""
    whole = round(interval_seconds)
    if whole <= 0 or abs(interval_seconds - whole) > 1e-6:
        raise _interval_error(interval_seconds)
    if whole < 60:
        if version >= SECONDS_SCHEDULES_SINCE and not force_loop:
            return JobPlan("seconds", f"{whole} seconds", FLUSH_COMMAND)
        return JobPlan("loop", "* * * * *", f"CALL pybatch.flush_loop('{whole} seconds')")
    minutes, rest = divmod(whole, 60)
    if rest or 60 % minutes:
        raise _interval_error(interval_seconds)
    schedule = {1: "* * * * *", 60: "0 * * * *"}.get(minutes, f"*/{minutes} * * * *")
    return JobPlan("minutes", schedule, FLUSH_COMMAND)


def check_interval(interval_seconds: float) -> None:
    """Raise CronError when pg_cron cannot run a flush at this interval (same rules on every version)."""
    plan_job(interval_seconds, SECONDS_SCHEDULES_SINCE)


def _interval_error(interval_seconds: float) -> CronError:
    return CronError(
        f"interval {format_duration(interval_seconds)} cannot be expressed by pg_cron: use whole seconds "
        f"from 1s to 59s, or whole minutes that divide an hour (1m, 2m, 5m, 10m, 15m, 30m, 60m), {HINT} "
        f"(it takes any interval)"
    )


def purge_command(database: str, cron_connection: psycopg.Connection) -> str:
    """The purge job's SQL: pybatch's own rows of cron.job_run_details past RUN_HISTORY."""
    return (
        sql.SQL(
            "DELETE FROM cron.job_run_details d USING cron.job j"
            " WHERE d.jobid = j.jobid AND j.jobname IN ({flush}, {purge})"
            " AND (d.end_time < pg_catalog.now() - {keep}::interval"
            " OR (d.end_time IS NULL AND d.status = 'failed' AND d.runid < (SELECT pg_catalog.max(r.runid)"
            " FROM cron.job_run_details r WHERE r.jobid = d.jobid) - {kept}))"
        )
        .format(
            flush=sql.Literal(flush_job_name(database)),
            purge=sql.Literal(purge_job_name(database)),
            keep=sql.Literal(f"{int(RUN_HISTORY.total_seconds())} seconds"),
            kept=sql.Literal(TIMELESS_RUNS_KEPT),
        )
        .as_string(cron_connection)
    )


def purge_schedule(database: str) -> str:
    """Hourly, at a minute taken from the database name so many databases do not purge at once."""
    return f"{zlib.crc32(database.encode()) % 60} * * * *"


# -- public API ------------------------------------------------------------------


def install(conn: psycopg.Connection, interval_seconds: float, *, force_loop: bool = False) -> CronJob:
    """Create or update this database's flush job (and its purge job); store the interval in settings.

    `conn` is the caller's autocommit connection to the app database. All or nothing: every
    check (pg_cron, privileges, the staleness budget, the settings' range) runs before the jobs
    are scheduled, the interval is stored in a transaction that commits only once they are, and
    jobs scheduled by a call that then fails are removed.
    """
    check_interval(interval_seconds)
    db.require_autocommit(conn, "cron.install")
    app = conn
    target = _target(app)
    _require_cron_loaded(target)
    with _cron_session(app, target) as cron:
        version = _ensure_extension(cron, target, create=True)
        _require_privileges(cron, target)
        plan = plan_job(interval_seconds, parse_version(version), force_loop=force_loop)
        _require_executable(app, target)
        previous = _read_job(cron, flush_job_name(target.database))
        node = _server_node(cron)
        stale = [job for job in (previous, _read_job(cron, purge_job_name(target.database))) if job is not None]
        if previous is not None and any(_wrong_node(job, node) for job in stale):
            # A job replicated from another node (a promoted standby) or restored from a dump keeps that
            # node's cron.host/port, and scheduling it again by name would keep them: make it anew.
            log.warning(
                "pg_cron's jobs name another server; scheduling them anew for this one",
                extra={"jobs": [job.name for job in stale], "node": None if node is None else f"{node[0]}:{node[1]}"},
            )
            _unschedule_in(cron, target)
            previous = None
        try:
            with db.translated("cannot store the flush interval"), app.transaction():
                interval = timedelta(seconds=interval_seconds)
                budget = require_staleness_budget(app, "flush_interval", interval)
                store_setting(app, "flush_interval", interval)
                # Scheduled inside the settings transaction: it commits only once they are.
                with _cron_call(target, "cannot schedule the pg_cron job"), cron.transaction():
                    _schedule(cron, flush_job_name(target.database), plan.schedule, plan.command, target.database)
                    _schedule(
                        cron,
                        purge_job_name(target.database),
                        purge_schedule(target.database),
                        purge_command(target.database, cron),
                        str(target.cron_database),
                    )
                job = _read_job(cron, flush_job_name(target.database))
        except BaseException:
            # The settings rolled back; put the jobs back as they were.
            with contextlib.suppress(PybatchError, psycopg.Error):
                if previous is None:
                    _unschedule_in(cron, target)
                else:
                    _schedule(cron, previous.name, previous.schedule, previous.command, previous.database)
            raise
    if budget.verdict == "tight":
        log.warning("flush interval leaves little margin: %s", budget.reason, extra={"staleness": budget.reason})
    assert job is not None  # just scheduled
    log.info(
        "installed pg_cron flush job", extra={"cron_job": asdict(job), "mode": plan.mode, "pg_cron_version": version}
    )
    return job


def _server_node(cron: psycopg.Connection) -> tuple[str, int] | None:
    """This server as pg_cron names it in a job it schedules now: (cron.host, port). None when
    cron.host is hidden from this role (it needs pg_read_all_settings): then no job is judged
    to name another server."""
    host = _setting(cron, "cron.host")
    if host is None:
        return None
    with db.translated("cannot read the server's port"):
        row = cron.execute("SELECT current_setting('port')::int").fetchone()
    assert row is not None
    return host, int(row[0])


def _wrong_node(job: CronJob, node: tuple[str, int] | None) -> bool:
    return (
        node is not None
        and job.nodename is not None
        and job.nodeport is not None
        and (job.nodename, job.nodeport) != node
    )


def _schedule(cron: psycopg.Connection, name: str, schedule: str, command: str, database: str) -> None:
    cron.execute("SELECT cron.schedule_in_database(%s, %s, %s, %s)", (name, schedule, command, database))


def job_interval(job: CronJob) -> float | None:
    """How often a pybatch flush job flushes, in seconds, read back from its schedule and command."""
    loop = re.search(r"flush_loop\('(\d+) seconds'\)", job.command)
    if loop:
        return float(loop.group(1))
    seconds = re.fullmatch(r"(\d+) seconds", job.schedule.strip())
    if seconds:
        return float(seconds.group(1))
    minutes = {"* * * * *": 60.0, "0 * * * *": 3600.0}.get(job.schedule.strip())
    if minutes:
        return minutes
    every = re.fullmatch(r"\*/(\d+) \* \* \* \*", job.schedule.strip())
    return float(every.group(1)) * 60 if every else None


def installed_job(conn: psycopg.Connection) -> CronJob | None:
    """This database's flush job, or None when there is none, or no pg_cron this role can see."""
    db.require_autocommit(conn, "cron.installed_job")
    target = _target(conn)
    if target.cron_database is None:
        return None
    with contextlib.ExitStack() as stack:
        try:
            cron = stack.enter_context(_cron_session(conn, target))
        except CronError:
            return None
        if _extension_version(cron) is None:
            return None
        with db.translated("cannot check privileges on schema cron"):
            usage = cron.execute("SELECT has_schema_privilege('cron', 'USAGE')").fetchone()
        if not (usage and usage[0]):
            return None
        return _read_job(cron, flush_job_name(target.database))


def stored_interval(conn: psycopg.Connection) -> float:
    """pybatch.settings.flush_interval in seconds: the default when no interval is given."""
    return read_flush_settings(conn).flush_interval.total_seconds()


def job_names(conn: psycopg.Connection) -> tuple[str | None, list[str]]:
    """pg_cron's database and the names of this database's pybatch jobs there, for saying
    what `remove` would remove; (None, []) where pg_cron is absent or out of this role's reach."""
    db.require_autocommit(conn, "cron.job_names")
    target = _target(conn, require_migrated=False)
    if target.cron_database is None:
        return None, []
    names = [flush_job_name(target.database), purge_job_name(target.database)]
    with contextlib.ExitStack() as stack:
        try:
            cron = stack.enter_context(_cron_session(conn, target))
        except CronError:
            return target.cron_database, []
        if _extension_version(cron) is None:
            return target.cron_database, []
        with db.translated("cannot check privileges on schema cron"):
            usage = cron.execute("SELECT has_schema_privilege('cron', 'USAGE')").fetchone()
        if not (usage and usage[0]):
            return target.cron_database, []
        with _cron_call(target, "cannot list the pg_cron jobs"):
            rows = cron.execute("SELECT jobname FROM cron.job WHERE jobname = ANY(%s) ORDER BY jobname", (names,))
            return target.cron_database, [str(row[0]) for row in rows.fetchall()]


def remove(conn: psycopg.Connection) -> int:
    """Remove this database's pybatch jobs and end a running flush loop; return how many jobs went.

    A no-op returning 0 where pg_cron is absent. A role without access to the
    cron schema or database cannot own jobs there, so it also gets 0.
    """
    db.require_autocommit(conn, "cron.remove")
    removed = 0
    target = _target(conn, require_migrated=False)
    if target.cron_database is not None:
        removed = _unschedule(conn, target)
    _end_loops(conn)
    if removed:
        log.info("removed pg_cron jobs", extra={"database": target.database, "jobs_removed": removed})
    return removed


def status(conn: psycopg.Connection, *, cron_conn: psycopg.Connection | None = None) -> CronStatus:
    """The job, its recent runs, the age of the last successful flush, and a diagnosis (status.error).

    `cron_conn`: a connection to pg_cron's database the caller already holds (doctor's), used
    instead of opening one."""
    db.require_autocommit(conn, "cron.status")
    target = _target(conn)
    _require_cron_loaded(target)
    interval = read_flush_settings(conn).flush_interval.total_seconds()
    with db.translated("cannot read pybatch.flush_log"):
        row = conn.execute(
            "SELECT (SELECT max(f.started_at + f.duration) FROM pybatch.flush_log f WHERE f.error IS NULL),"
            " clock_timestamp()"
        ).fetchone()
    assert row is not None
    last_flush_at, now = row
    with _cron_session(conn, target, cron_conn) as cron:
        version = _ensure_extension(cron, target, create=False)
        _require_usage(cron, target)
        job = _read_job(cron, flush_job_name(target.database))
        purge = _read_job(cron, purge_job_name(target.database))
        runs = _recent_runs(cron, job.jobid) if job else []
        cron_host = _setting(cron, "cron.host")
        node = _server_node(cron)
        workers = (_setting(cron, "cron.use_background_workers") or "off") == "on"
    result = CronStatus(
        database=target.database,
        cron_database=str(target.cron_database),
        pg_cron_version=version,
        configured_interval=interval,
        job=job,
        purge_job=purge,
        runs=runs,
        last_flush_at=last_flush_at,
        last_flush_age=(now - last_flush_at).total_seconds() if last_flush_at else None,
        server_node=node,
        background_workers=workers,
    )
    result.error = diagnose(result, cron_host)
    return result


def diagnose(state: CronStatus, cron_host: str | None) -> CronError | None:
    """A CronError for a job that names another server (replicated from an old primary, or restored),
    for a job whose interval differs from settings.flush_interval, or for the newest finished run
    when it failed (pg_hba refusal first) and no flush succeeded since; else None. A run that a
    restart, crash or failover interrupted ("server restarted") says nothing and is passed over."""
    if state.job is not None and not state.background_workers and _wrong_node(state.job, state.server_node):
        assert state.server_node is not None
        return CronError(
            f"pg_cron's job {state.job.name} connects to {state.job.nodename}:{state.job.nodeport}, but this "
            f"server is {state.server_node[0]}:{state.server_node[1]} (cron.host, port): a job replicated from "
            "the old primary after a failover, or restored from a dump, keeps the node it was scheduled on, so "
            "every run fails to connect; run `pybatch cron install` here to schedule it for this server (or set "
            "cron.use_background_workers = on, which runs jobs without a connection)"
        )
    if state.job is not None:
        runs_every = job_interval(state.job)
        if runs_every is not None and abs(runs_every - state.configured_interval) > 1e-6:
            return CronError(
                f"pg_cron's job {state.job.name} flushes every {format_duration(runs_every)} but "
                f"settings.flush_interval is {format_duration(state.configured_interval)}, which health "
                f"judges lateness by: run `pybatch cron install --interval "
                f"{format_duration(state.configured_interval)}` (or `pybatch config set flush_interval "
                f"{format_duration(runs_every)}`)"
            )
    finished = [
        run
        for run in state.runs
        if run.status in ("failed", "succeeded") and (run.return_message or "").strip() != RESTARTED
    ]
    if not finished or finished[0].status != "failed" or state.job is None:
        return None
    run = finished[0]
    ended = run.end_time or run.start_time
    if ended is not None and state.last_flush_at is not None and state.last_flush_at > ended:
        return None  # a failure in the past: flushes have succeeded since
    message = (run.return_message or "").strip().splitlines()[0] if run.return_message else "no message"
    if CONNECTION_FAILED in message or "pg_hba" in message or "authentication failed" in message:
        return CronError(
            f"pg_cron's job {state.job.name} could not connect to database {state.database} as role "
            f"{state.job.username} (run {run.runid}: {message}): pg_hba.conf must let that role connect from "
            f"cron.host ({cron_host or HIDDEN_CRON_HOST}) without a password (trust or peer, or a .pgpass for the "
            f"server's OS user), then reload PostgreSQL; {HINT}"
        )
    return CronError(
        f"pg_cron's last run of {state.job.name} failed (run {run.runid}: {message}): fix the cause shown, "
        f"or remove the job with `pybatch cron remove` and {HINT.removeprefix('or ')}"
    )


# -- checks ----------------------------------------------------------------------------


def _target(app: psycopg.Connection, *, require_migrated: bool = True) -> _Target:
    with db.translated("cannot inspect the server for pg_cron"):
        row = app.execute(
            "SELECT current_database(), current_user,"
            " EXISTS (SELECT FROM pg_available_extensions WHERE name = 'pg_cron'),"
            # Both settings are visible to superusers and pg_read_all_settings only.
            " pg_has_role('pg_read_all_settings', 'USAGE'),"
            " (SELECT 'pg_cron' = ANY(string_to_array(replace(setting, ' ', ''), ','))"
            "  FROM pg_settings WHERE name = 'shared_preload_libraries'),"
            " (SELECT setting FROM pg_settings WHERE name = 'cron.database_name')"
        ).fetchone()
    assert row is not None
    database, user, available, can_read_settings, preloaded, cron_database = row
    if require_migrated and not installed(app):
        raise NotMigrated(f"pybatch is not installed in database {database}; run `pybatch migrate`")
    if not can_read_settings:
        # pg_cron's value is hidden from this role: assume pg_cron's default database (a role
        # that needs another must be given pg_read_all_settings), when pg_cron is loaded at all.
        cron_database = DEFAULT_CRON_DATABASE if pg_cron_loaded(app) is not False else None
    elif not preloaded:
        # cron.database_name may be written in postgresql.conf without pg_cron loaded.
        cron_database = None
    return _Target(database, user, cron_database or None, bool(available), db.describe(app))


def pg_cron_loaded(conn: psycopg.Connection) -> bool | None:
    """Whether pg_cron's library is loaded, for a role that may not read shared_preload_libraries.

    pg_cron defines cron.database_name as readable by superusers and pg_read_all_settings only,
    and only where it is loaded (it loads only through shared_preload_libraries). So reading it
    is refused exactly when pg_cron is loaded: True. Read without error, it is a placeholder
    from postgresql.conf or absent: False. None when the check itself failed otherwise."""
    try:
        conn.execute("SELECT pg_catalog.current_setting('cron.database_name', true)")
    except psycopg.errors.InsufficientPrivilege:
        return True
    except psycopg.Error:
        return None
    return False


def _require_cron_loaded(target: _Target) -> None:
    if not target.pg_cron_available:
        raise CronError(
            f"pg_cron is not installed on server {target.server}: install its package (Debian: "
            f"postgresql-<major>-cron), set shared_preload_libraries = 'pg_cron' and restart PostgreSQL, {HINT}"
        )
    if target.cron_database is None:
        raise target.not_preloaded()


@contextlib.contextmanager
def _cron_call(target: _Target, context: str) -> Iterator[None]:
    """Like db.translated, but pg_cron's not-preloaded error becomes the actionable CronError."""
    try:
        yield
    except psycopg.Error as exc:
        if PRELOAD_ERROR in str(exc):
            raise target.not_preloaded() from None
        raise db.translate(exc, context) from exc


@contextlib.contextmanager
def _cron_session(
    app: psycopg.Connection, target: _Target, given: psycopg.Connection | None = None
) -> Iterator[psycopg.Connection]:
    """A connection to pg_cron's database: `given`, else `app` itself when pg_cron lives in the
    app database, else a session derived from `app` (closed on the way out)."""
    assert target.cron_database is not None
    if given is not None:
        yield given
        return
    if target.cron_database == target.database:
        yield app
        return
    try:
        cron = db.connect_like(app, dbname=target.cron_database)
    except PybatchError as exc:
        raise CronError(
            f"cannot connect to pg_cron's database {target.cron_database} (cron.database_name) as role "
            f"{target.user}: {exc}; grant CONNECT on it and allow it in pg_hba.conf, {HINT}"
        ) from None
    with cron:
        yield cron


def _ensure_extension(cron: psycopg.Connection, target: _Target, *, create: bool) -> str:
    """The installed pg_cron version; create the extension when asked and allowed."""
    version = _extension_version(cron)
    if version is None and create:
        try:
            cron.execute("CREATE EXTENSION IF NOT EXISTS pg_cron")
        except psycopg.errors.InsufficientPrivilege:
            pass  # reported below, with what to do
        except psycopg.Error as exc:
            if PRELOAD_ERROR in str(exc):
                raise target.not_preloaded() from None
            raise CronError(
                f"cannot create extension pg_cron in database {target.cron_database}: {db.first_line(exc)}; {HINT}"
            ) from None
        else:
            log.info("created extension pg_cron", extra={"database": target.cron_database})
        version = _extension_version(cron)
    if version is None:
        raise CronError(
            f"pg_cron is not installed in database {target.cron_database} (cron.database_name) on server "
            f"{target.server}: a superuser must run CREATE EXTENSION pg_cron there, {HINT}"
        )
    return version


def _extension_version(cron: psycopg.Connection) -> str | None:
    with db.translated("cannot read pg_cron's version"):
        row = cron.execute("SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'").fetchone()
    return str(row[0]) if row else None


def _grant_hint(target: _Target) -> str:
    return (
        f"a superuser must run GRANT USAGE ON SCHEMA cron TO {target.user}; GRANT EXECUTE ON FUNCTION "
        f"{SCHEDULE_IN_DATABASE} TO {target.user}; in database {target.cron_database}, {HINT}"
    )


def _require_usage(cron: psycopg.Connection, target: _Target) -> None:
    with db.translated("cannot check privileges on schema cron"):
        row = cron.execute("SELECT has_schema_privilege('cron', 'USAGE')").fetchone()
    if not (row and row[0]):
        raise CronError(f"role {target.user} has no privilege on schema cron: {_grant_hint(target)}")


def _require_privileges(cron: psycopg.Connection, target: _Target) -> None:
    _require_usage(cron, target)
    with db.translated("cannot check privileges on schema cron"):
        row = cron.execute(
            "SELECT has_function_privilege(to_regprocedure(%s), 'EXECUTE')", (SCHEDULE_IN_DATABASE,)
        ).fetchone()
    if not (row and row[0]):
        raise CronError(f"role {target.user} may not call cron.schedule_in_database: {_grant_hint(target)}")


def _require_executable(app: psycopg.Connection, target: _Target) -> None:
    """The job runs as this role: it must be allowed to run the job's command in the app database."""
    # The command's procedure calls the flush steps as the job's role, so it needs them all.
    for routine in (kind_and_name.split(" ", 1)[1] for kind_and_name in FLUSH_ROUTINES):
        _require_routine(app, target, routine)


def _require_routine(app: psycopg.Connection, target: _Target, routine: str) -> None:
    with db.translated("cannot check privileges in the app database"):
        row = app.execute(
            "SELECT to_regprocedure(%s) IS NOT NULL, has_function_privilege(to_regprocedure(%s), 'EXECUTE')",
            (routine, routine),
        ).fetchone()
    assert row is not None
    if not row[0]:
        raise NotMigrated(f"{routine} is missing in database {target.database}; run `pybatch migrate`")
    if not row[1]:
        raise PermissionDenied(
            f"role {target.user} cannot execute {routine} in database {target.database}, so its pg_cron job "
            f"would fail: GRANT EXECUTE on it to {target.user}, {HINT}"
        )


# -- reading and removing jobs ------------------------------------------------------------


def _read_job(cron: psycopg.Connection, name: str) -> CronJob | None:
    with db.translated("cannot read cron.job"), cron.cursor(row_factory=dict_row) as cur:
        # cron.job has row-level security: a role sees its own jobs, a superuser every job.
        cur.execute(
            "SELECT jobid, jobname AS name, schedule, command, database, username, active, nodename, nodeport"
            " FROM cron.job WHERE jobname = %s ORDER BY jobid LIMIT 1",
            (name,),
        )
        row = cur.fetchone()
    return CronJob(**row) if row else None


def _recent_runs(cron: psycopg.Connection, jobid: int) -> list[CronRun]:
    with db.translated("cannot read cron.job_run_details"), cron.cursor(row_factory=dict_row) as cur:
        # By runid: a run whose connection failed has no start_time.
        cur.execute(
            "SELECT runid, status, return_message, start_time, end_time FROM cron.job_run_details"
            " WHERE jobid = %s ORDER BY runid DESC LIMIT %s",
            (jobid, RECENT_RUNS),
        )
        return [CronRun(**row) for row in cur.fetchall()]


def _setting(conn: psycopg.Connection, name: str) -> str | None:
    """A setting's value, or None when it is absent or hidden from this role: pg_settings shows
    pg_cron's settings only to superusers and pg_read_all_settings, where current_setting() raises."""
    with db.translated(f"cannot read setting {name}"):
        row = conn.execute("SELECT setting FROM pg_catalog.pg_settings WHERE name = %s", (name,)).fetchone()
    return str(row[0]) if row and row[0] is not None else None


def _unschedule(app: psycopg.Connection, target: _Target) -> int:
    with contextlib.ExitStack() as stack:
        try:
            cron = stack.enter_context(_cron_session(app, target))
        except CronError as exc:
            log.warning("cannot reach pg_cron's database, no jobs removed", extra={"reason": str(exc)})
            return 0
        return _unschedule_in(cron, target)


def _unschedule_in(cron: psycopg.Connection, target: _Target) -> int:
    """Remove this database's jobs through a connection to pg_cron's database; how many went."""
    if _extension_version(cron) is None:
        return 0
    with db.translated("cannot check privileges on schema cron"):
        usage = cron.execute("SELECT has_schema_privilege('cron', 'USAGE')").fetchone()
    if not (usage and usage[0]):
        return 0  # without USAGE this role cannot have scheduled anything
    names = [flush_job_name(target.database), purge_job_name(target.database)]
    with _cron_call(target, "cannot remove the pg_cron jobs"), cron.transaction():
        rows = cron.execute("SELECT jobid FROM cron.job WHERE jobname = ANY(%s)", (names,)).fetchall()
        jobids = [row[0] for row in rows]
        cron.execute("DELETE FROM cron.job_run_details WHERE jobid = ANY(%s)", (jobids,))
        for jobid in jobids:
            cron.execute("SELECT cron.unschedule(%s::bigint)", (jobid,))
    return len(jobids)


def _end_loops(app: psycopg.Connection, *, settle: float = 0.3) -> None:
    """End flush loops running in this database. Each step commits, so ending one loses nothing
    (an interrupted step rolls back; what it had not merged stays in staging or pybatch.pending).
    Checked twice: a run pg_cron launched just before its job was removed may still be connecting."""
    for attempt in range(2):
        with db.translated("cannot end the running flush loop"):
            ended = app.execute(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND (application_name = %s OR query ILIKE 'CALL pybatch.flush_loop(%%')",
                (LOOP_APPLICATION_NAME,),
            ).fetchone()
        if ended and ended[0]:
            log.info("ended running flush loop", extra={"backends": ended[0]})
        if attempt == 0:
            time.sleep(settle)
