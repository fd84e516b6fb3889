"""`pybatch doctor`: one check per line, each OK or what to fix.

Checks never raise: a check that cannot run reports why as its result. A `fail`
means something is broken now; a `warn` means it works but should be changed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

import psycopg
import psycopg.conninfo

from pybatch import db, inspect, migrate
from pybatch.errors import NotMigrated, PybatchError

log = logging.getLogger(__name__)

OK, WARN, FAIL = "ok", "warn", "fail"
# Columns flush() writes: an index on any of them makes every flush update non-HOT.
FLUSHED_COLUMNS = ["first_connected_at", "last_connected_at", "disconnected_at",
                   "last_connected_replica_id", "updated_at"]


@dataclass(frozen=True)
class Check:
    name: str
    level: str  # ok, warn or fail
    message: str

    @property
    def ok(self) -> bool:
        return self.level != FAIL


@dataclass(frozen=True)
class Thresholds:
    """Where doctor draws its lines (tests lower them to build broken states cheaply)."""

    min_server_version: int = 130000  # gen_random_uuid() in core
    stalled_intervals: int = 5  # staging older than this many flush intervals is not draining
    hot_ratio_min: float = 0.5
    hot_min_updates: int = 1000  # fewer updates than this are too few to judge
    recommended_fillfactor: int = 70  # FACTS.md: HOT resumes at 70
    job_run_details_max_rows: int = 500_000  # ~30 days of a 5 s job


@dataclass(frozen=True)
class DoctorReport:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)



def doctor(dsn: str, thresholds: Thresholds | None = None) -> DoctorReport:
    limits = thresholds or Thresholds()
    report = DoctorReport()
    with db.connect(dsn) as conn:
        context = _Context(dsn, conn, limits)
        for check in (
            context.server_version, context.migrations, context.compatibility, context.target_table,
            context.pg_cron_preload, context.pg_cron_extension, context.cron_job, context.job_run_details,
            context.flushes, context.staging_growth, context.hot_updates,
        ):
            result = _run(check)
            log.info("doctor check", extra={"check": result.name, "level": result.level, "detail": result.message})
            report.checks.append(result)
        context.close()
    return report


def _run(check: Callable[[], Check]) -> Check:
    name = check.__name__
    try:
        return check()
    except NotMigrated:
        return Check(name, FAIL, "pybatch is not installed in this database: run `pybatch migrate`")
    except PybatchError as exc:
        return Check(name, FAIL, f"could not check: {exc}")
    except psycopg.Error as exc:
        return Check(name, FAIL, f"could not check: {db.first_line(exc)}")


class _Context:
    """State the checks share: connections, settings, what earlier checks found."""

    def __init__(self, dsn: str, conn: psycopg.Connection, limits: Thresholds) -> None:
        self.dsn = dsn
        self.conn = conn
        self.limits = limits
        self.dbname = conn.info.dbname
        self._cron_conn: psycopg.Connection | None = None
        self.cron_database: str | None = None
        self.cron_version: str | None = None
        self._health: inspect.Health | None = None

    def close(self) -> None:
        if self._cron_conn is not None and self._cron_conn is not self.conn:
            self._cron_conn.close()

    def scalar(self, query: str, params: tuple[object, ...] = ()) -> object:
        row = self.conn.execute(query, params).fetchone()
        return None if row is None else row[0]

    @property
    def health(self) -> inspect.Health:
        if self._health is None:
            self._health = inspect.health(self.conn)
        return self._health

    def flushes_arrive(self) -> bool:
        try:
            return self.health.ok
        except PybatchError:
            return False

    # -- the checks ----------------------------------------------------------------
    def server_version(self) -> Check:
        number = int(str(self.scalar("SELECT current_setting('server_version_num')")))
        text = str(self.scalar("SELECT current_setting('server_version')"))
        return judge_server_version(number, text, self.limits.min_server_version)

    def migrations(self) -> Check:
        pending = migrate.pending_ids(self.dsn)
        if pending:
            return Check("migrations", FAIL, f"pending migrations {', '.join(pending)}: run `pybatch migrate`")
        return Check("migrations", OK, "all migrations applied")

    def compatibility(self) -> Check:
        known = {state.id for state in migrate.status(self.dsn)}
        with db.translated("cannot read the applied migrations"):
            rows = migrate.recorded_ids(self.conn)
        unknown = [r for r in rows if r not in known]
        if unknown:
            return Check("compatibility", FAIL,
                         f"the database has migrations this client does not know ({', '.join(unknown)}): "
                         "it was upgraded by a newer pybatch; upgrade this client")
        return Check("compatibility", OK, f"client knows all {len(rows)} applied migration(s)")

    def target_table(self) -> Check:
        with db.translated("public.workspace_agents cannot serve as target"):
            self.conn.execute("SELECT pybatch.check_target()")
        return Check("target_table", OK, "public.workspace_agents has every column pybatch needs")

    def pg_cron_preload(self) -> Check:
        self.cron_database = _optional_text(self.scalar("SELECT current_setting('cron.database_name', true)"))
        try:
            libraries = str(self.scalar("SELECT current_setting('shared_preload_libraries')"))
        except psycopg.errors.InsufficientPrivilege:
            # Not visible to this role: pg_cron's settings exist only when it is loaded.
            libraries = "pg_cron" if self.cron_database else ""
        preloaded = "pg_cron" in [name.strip().strip('"') for name in libraries.split(",")]
        if not preloaded:
            self.cron_database = None
            return Check("pg_cron_preload", WARN,
                         "pg_cron is not in shared_preload_libraries: add it and restart the server to flush with "
                         "pg_cron, or run `pybatch scheduler`")
        return Check("pg_cron_preload", OK, f"pg_cron preloaded (cron.database_name = {self.cron_database})")

    def cron_connection(self) -> psycopg.Connection:
        assert self.cron_database is not None
        if self._cron_conn is None:
            if self.cron_database == self.dbname:
                self._cron_conn = self.conn
            else:
                self._cron_conn = db.connect(psycopg.conninfo.make_conninfo(self.dsn, dbname=self.cron_database))
        return self._cron_conn

    def pg_cron_extension(self) -> Check:
        if self.cron_database is None:
            return Check("pg_cron_extension", WARN, "skipped: pg_cron is not preloaded")
        row = self.cron_connection().execute(
            "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'pg_cron'").fetchone()
        if row is None:
            return Check("pg_cron_extension", WARN,
                         f"pg_cron is not installed: run `CREATE EXTENSION pg_cron` in database "
                         f"{self.cron_database}, or run `pybatch scheduler`")
        self.cron_version = str(row[0])
        return Check("pg_cron_extension", OK, f"pg_cron {self.cron_version} in database {self.cron_database}")

    def cron_job(self) -> Check:
        from pybatch.schedule import cron  # imported late: only this check needs it

        name = cron.flush_job_name(self.dbname)
        if self.cron_version is None:
            return self._no_job(f"no pg_cron job {name} (pg_cron is not available)")
        state = cron.status(self.dsn)
        if state.job is None:
            return self._no_job(f"no pg_cron job {name}")
        if not state.job.active:
            return Check("cron_job", FAIL, f"pg_cron job {name} is inactive: run `pybatch cron install`")
        if state.error is not None:  # the newest finished run failed; the message says what to do
            return Check("cron_job", FAIL, str(state.error))
        finished = [run for run in state.runs if run.status in ("succeeded", "failed")]
        last = f"last run succeeded at {finished[0].end_time}" if finished else "no finished run yet"
        return Check("cron_job", OK, f"pg_cron job {name} scheduled ({state.job.schedule}), {last}")

    def _no_job(self, what: str) -> Check:
        if self.flushes_arrive():
            return Check("cron_job", OK, f"{what}, but flushes arrive (another scheduler, e.g. `pybatch scheduler`)")
        return Check("cron_job", FAIL,
                     f"{what} and no recent flush: run `pybatch cron install` or `pybatch scheduler`")

    def job_run_details(self) -> Check:
        if self.cron_version is None:
            return Check("job_run_details", OK, "skipped: no pg_cron")
        limit = self.limits.job_run_details_max_rows
        cron = self.cron_connection()
        with db.translated("cannot read cron.job_run_details"):
            # A bounded count: cheap even when the table is huge.
            row = cron.execute(
                "SELECT count(*), pg_catalog.pg_total_relation_size('cron.job_run_details') "
                "FROM (SELECT FROM cron.job_run_details LIMIT %s) s", (limit + 1,),
            ).fetchone()
        assert row is not None
        rows, size = int(row[0]), int(row[1])
        if rows > limit:
            return Check("job_run_details", WARN,
                         f"cron.job_run_details holds over {limit} rows ({size // 1048576} MB); pg_cron never "
                         "purges it: DELETE FROM cron.job_run_details WHERE end_time < now() - interval '7 days'")
        return Check("job_run_details", OK, f"cron.job_run_details holds {rows} rows ({size // 1024} kB)")

    def flushes(self) -> Check:
        health = self.health
        level = {"ok": OK, "late": WARN}.get(health.status, FAIL)
        return Check("flushes", level, f"{health.status}: {health.reason}")

    def staging_growth(self) -> Check:
        staging = inspect.staging(self.conn)
        if not staging.available:
            return Check("staging_growth", OK, f"skipped: {staging.reason}")
        interval = self.health.flush_interval
        limit = interval * self.limits.stalled_intervals
        age = staging.oldest_beat_age
        if staging.rows_staged and age is not None and age > limit:
            approx = "about " if staging.estimated else ""
            return Check("staging_growth", FAIL,
                         f"staging holds {approx}{staging.rows_staged} heartbeats and the oldest has waited "
                         f"{_secs(age)} (over {self.limits.stalled_intervals} flush intervals): nothing drains it; "
                         "check the scheduler (`pybatch cron status`) or run `pybatch flush`")
        cap = inspect.read_settings(self.conn).max_rows_per_flush
        if cap is not None and staging.rows_staged is not None and staging.rows_staged > cap:
            return Check("staging_growth", WARN,
                         f"staging holds about {staging.rows_staged} heartbeats, more than one flush drains "
                         f"(max_rows_per_flush {cap}): catching up takes several passes")
        return Check("staging_growth", OK, f"staging holds {staging.rows_staged} heartbeats, oldest "
                     f"{_secs(age) if age is not None else '-'} old")

    def hot_updates(self) -> Check:
        with db.translated("cannot read pg_stat_user_tables"):
            row = self.conn.execute(
                "SELECT s.n_tup_upd, s.n_tup_hot_upd, (SELECT o.option_value FROM pg_catalog.pg_options_to_table("
                "c.reloptions) o WHERE o.option_name = 'fillfactor') FROM pg_catalog.pg_stat_user_tables s "
                "JOIN pg_catalog.pg_class c ON c.oid = s.relid WHERE s.relid = 'public.workspace_agents'::regclass"
            ).fetchone()
            indexed = [str(r[0]) for r in self.conn.execute(
                "SELECT DISTINCT a.attname FROM pg_catalog.pg_index i JOIN pg_catalog.pg_attribute a "
                "ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) "
                "WHERE i.indrelid = 'public.workspace_agents'::regclass AND a.attname = ANY (%s) ORDER BY 1",
                (FLUSHED_COLUMNS,),
            ).fetchall()]
        if row is None:
            return Check("hot_updates", WARN, "no statistics for public.workspace_agents")
        updates, hot, fillfactor_text = int(row[0]), int(row[1]), row[2]
        fillfactor = int(fillfactor_text) if fillfactor_text else 100
        return judge_hot(updates, hot, fillfactor, indexed, self.limits)


def judge_server_version(number: int, text: str, minimum: int) -> Check:
    if number < minimum:
        return Check("server_version", FAIL,
                     f"PostgreSQL {text} is too old: pybatch needs {minimum // 10000} or newer")
    return Check("server_version", OK, f"PostgreSQL {text}")


def judge_hot(updates: int, hot: int, fillfactor: int, indexed: list[str], limits: Thresholds) -> Check:
    """HOT-update ratio of workspace_agents, with what to change when it is low (FACTS.md)."""
    if updates < limits.hot_min_updates:
        return Check("hot_updates", OK, f"{updates} updates so far: too few to judge HOT ({hot} HOT)")
    ratio = hot / updates
    summary = f"{ratio:.0%} of {updates} updates of public.workspace_agents were HOT (fillfactor {fillfactor})"
    if ratio >= limits.hot_ratio_min:
        return Check("hot_updates", OK, summary)
    advice = []
    if indexed:
        advice.append(f"indexes on {', '.join(indexed)} (columns flush() updates) make every update non-HOT: "
                      "drop them if you can")
    if fillfactor > limits.recommended_fillfactor:
        advice.append(f"ALTER TABLE public.workspace_agents SET (fillfactor = {limits.recommended_fillfactor}), "
                      "then rewrite it (VACUUM FULL, or pg_repack online) so pages keep room for new versions")
    if not advice:
        advice.append("check autovacuum keeps up on public.workspace_agents")
    return Check("hot_updates", WARN, f"{summary}: " + "; ".join(advice))


def _optional_text(value: object) -> str | None:
    return None if value is None or value == "" else str(value)


def _one_line(message: object) -> str:
    text = str(message or "").strip()
    return text.splitlines()[0] if text else "(no message)"


def _secs(age: timedelta) -> str:
    return f"{age.total_seconds():.0f}s"

