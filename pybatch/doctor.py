"""`pybatch doctor`: one check per line, each OK or what to fix.

Checks never raise: a check that cannot run reports why as its result. A `fail`
means something is broken now; a `warn` means it works but should be changed.

Every check runs on the caller's connection; the only other session doctor opens is one to
pg_cron's database, and only when cron.database_name names another database.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

import psycopg

from pybatch import db, migrate, routines, settings, status, versions
from pybatch.errors import NotMigrated, PermissionDenied, PybatchError

log = logging.getLogger(__name__)

OK, WARN, FAIL = "ok", "warn", "fail"
# A check this role may not run (a reader, say): not a failure, and never a conclusion drawn from it.
SKIP = "skip"
# The single-transaction flush: an old pg_cron job (made before the committed passes) runs it.
ONE_TRANSACTION_FLUSH = "pybatch.flush("


@dataclass(frozen=True)
class Check:
    name: str
    level: str  # ok, warn, fail or skip
    message: str

    @property
    def ok(self) -> bool:
        return self.level != FAIL


@dataclass(frozen=True)
class Thresholds:
    """Where doctor draws its lines (tests lower them to build broken states cheaply)."""

    min_server_version: int = versions.MIN_MAJOR * 10000  # pybatch.versions
    stalled_intervals: int = 5  # staging older than this many flush intervals is not draining
    hot_ratio_min: float = 0.8  # committed passes keep >= 95 % HOT in steady state (docs/benchmarks.md)
    hot_min_updates: int = 1000  # fewer updates than this are too few to judge
    recent_flushes: int = 30  # the flushes HOT ratio and table growth are judged over
    growth_max: float = 0.10  # heap or index growth over recent flushes that is worth a warning
    growth_min_bytes: int = 8 * 8192  # ... and at least this many bytes (a page or two is noise)
    old_snapshot_seconds: float = 60  # a snapshot this old holds back pruning
    # A standby's (hot_standby_feedback) or replication slot's xmin this many transactions old holds
    # back pruning on this server (the merge's own passes consume a few transactions per flush).
    xmin_age_min: int = 1000
    pending_patience_intervals: int = 2  # pending rows older than this many flush intervals are stuck
    job_run_details_max_rows: int = 500_000  # ~30 days of a 5 s job


@dataclass(frozen=True)
class DoctorReport:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


def doctor(conn: psycopg.Connection, thresholds: Thresholds | None = None) -> DoctorReport:
    """Run every check on `conn`, the caller's autocommit connection to the app database.

    Raises UnsupportedServer, naming the version and the supported range, on a server pybatch
    does not support: its other checks would only report that in other words."""
    db.require_autocommit(conn, "doctor")
    versions.require_supported(conn, "doctor")
    limits = thresholds or Thresholds()
    report = DoctorReport()
    context = _Context(conn, limits)
    try:
        for check in (
            context.server_version,
            context.connection,
            context.migrations,
            context.compatibility,
            context.routines,
            context.merge_owner,
            context.target_table,
            context.citus_layout,
            context.pg_cron_preload,
            context.pg_cron_extension,
            context.cron_job,
            context.job_run_details,
            context.flushes,
            context.staleness_budget,
            context.staging_growth,
            context.pending_and_quarantine,
            context.table_shape,
            context.hot_updates,
            context.table_growth,
        ):
            result = _run(check)
            log.info("doctor check", extra={"check": result.name, "level": result.level, "detail": result.message})
            report.checks.append(result)
    finally:
        context.close()
    return report


def _run(check: Callable[[], Check]) -> Check:
    name = check.__name__
    try:
        return check()
    except NotMigrated:
        return Check(name, FAIL, "pybatch is not installed in this database: run `pybatch migrate`")
    except PermissionDenied as exc:
        return Check(
            name,
            SKIP,
            f"skipped: {exc}; run doctor as the database owner, or GRANT pg_monitor to this role",
        )
    except PybatchError as exc:
        return Check(name, FAIL, f"could not check: {exc}")
    except psycopg.Error as exc:
        return Check(name, FAIL, f"could not check: {db.first_line(exc)}")


class _Context:
    """State the checks share: connections, settings, what earlier checks found."""

    def __init__(self, conn: psycopg.Connection, limits: Thresholds) -> None:
        self.conn = conn
        self.limits = limits
        self.dbname = conn.info.dbname
        self._cron_conn: psycopg.Connection | None = None
        self.cron_database: str | None = None
        self.cron_version: str | None = None
        self._health: status.Health | None = None
        self.cron_command: str | None = None
        # The role that may not read pg_cron's settings (no pg_read_all_settings), or None.
        self.settings_hidden_from: str | None = None

    def close(self) -> None:
        if self._cron_conn is not None and self._cron_conn is not self.conn:
            self._cron_conn.close()

    def scalar(self, query: str, params: tuple[object, ...] = ()) -> object:
        row = self.conn.execute(query, params).fetchone()
        return None if row is None else row[0]

    @property
    def health(self) -> status.Health:
        if self._health is None:
            self._health = status.health(self.conn)
        return self._health

    def flushes_arrive(self) -> bool:
        try:
            return self.health.ok
        except PybatchError:
            return False

    # -- the checks ----------------------------------------------------------------
    def server_version(self) -> Check:
        number, text = versions.server_version(self.conn)
        return judge_server_version(number, text, self.limits.min_server_version)

    def connection(self) -> Check:
        """What doctor is connected to: a standby, through a pooler, or a primary (with its standbys)."""
        where = db.describe(self.conn)
        if db.in_recovery(self.conn):
            return Check(
                "connection",
                WARN,
                f"{where}: {db.STANDBY_MESSAGE}; the views answer here (staging shows as NULL), "
                "but flushes, `config set`, `cron install`, `migrate` and `grant` run on the primary",
            )
        notes = []
        if db.through_pooler(self.conn):
            notes.append(
                "through a connection pooler (the server's backend pid differs from the pooler's): "
                "the clients, flushes, `status` and `doctor` work through one in transaction mode; run "
                "`pybatch migrate` against the server itself (it holds a session lock); pg_cron's job "
                "connects to the server, not through the pooler"
            )
        with db.translated("cannot read pg_stat_replication"):
            row = self.conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE r.backend_xmin IS NOT NULL) "
                "FROM pg_catalog.pg_stat_replication r",
                prepare=False,
            ).fetchone()
        standbys, feedback = (int(row[0]), int(row[1])) if row else (0, 0)
        if standbys:
            notes.append(
                f"primary with {standbys} streaming standby(s), {feedback} sending hot_standby_feedback "
                "(a long query on one holds back pruning here: see hot_updates)"
            )
        return Check("connection", OK, f"{where}: " + ("; ".join(notes) if notes else "a primary, connected directly"))

    def migrations(self) -> Check:
        pending = migrate.pending_ids(self.conn)
        if pending:
            return Check("migrations", FAIL, f"pending migrations {', '.join(pending)}: run `pybatch migrate`")
        return Check("migrations", OK, "all migrations applied")

    def compatibility(self) -> Check:
        known = {state.id for state in migrate.status(self.conn)}
        with db.translated("cannot read the applied migrations"):
            rows = migrate.recorded_ids(self.conn)
        unknown = [r for r in rows if r not in known]
        if unknown:
            return Check(
                "compatibility",
                FAIL,
                f"the database has migrations this client does not know ({', '.join(unknown)}): "
                "it was upgraded by a newer pybatch; upgrade this client",
            )
        return Check("compatibility", OK, f"client knows all {len(rows)} applied migration(s)")

    def routines(self) -> Check:
        """Every routine and view as its source file says: none changed, altered or dropped since."""
        stale = [s for s in migrate.routine_status(self.conn) if s.out_of_date]
        unknown = routines.unknown_objects(self.conn)
        if stale:
            listed = ", ".join(f"{s.source.name} ({s.state})" for s in stale)
            return Check("routines", FAIL, f"out of date: {listed}: run `pybatch migrate`")
        if unknown:
            return Check(
                "routines",
                WARN,
                f"{', '.join(unknown)} in schema pybatch have no source in this pybatch (retired, or made by hand)",
            )
        return Check("routines", OK, f"all {len(routines.sources())} routines and views match their sources")

    def merge_owner(self) -> Check:
        """The merge runs as exactly the table's owner (pybatch.check_merge_routines())."""
        try:
            self.conn.execute("SELECT pybatch.check_merge_routines()")
        except psycopg.errors.InsufficientPrivilege as exc:
            return Check("merge_owner", FAIL, db.first_line(exc).removeprefix("pybatch: "))
        return Check("merge_owner", OK, "the merge functions run as the owner of public.workspace_agents")

    def target_table(self) -> Check:
        problems = migrate.target_problems(self.conn)
        if problems:
            return Check("target_table", FAIL, "; ".join(problems))
        return Check("target_table", OK, "public.workspace_agents has every column pybatch needs")

    def citus_layout(self) -> Check:
        """On a Citus coordinator: workspace_agents hash-distributed by id (or local), and staging,
        pending and quarantine distributed by agent_id, co-located with it."""
        row = self.conn.execute("SELECT to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL").fetchone()
        if row is None or not row[0]:
            return Check("citus_layout", OK, "plain PostgreSQL (no citus extension): nothing to check")
        with db.translated("cannot read the Citus metadata (pg_dist_partition)"):
            rows = self.conn.execute(
                "SELECT t.name, p.partmethod::text, pg_catalog.column_to_column_name(p.logicalrelid, p.partkey),"
                " p.colocationid FROM unnest(%s::text[]) WITH ORDINALITY t(name, n)"
                " LEFT JOIN pg_catalog.pg_dist_partition p ON p.logicalrelid = pg_catalog.to_regclass(t.name)"
                " ORDER BY t.n",
                (CITUS_TABLES,),
            ).fetchall()
            shape = self.conn.execute(
                "SELECT count(DISTINCT s.shardid), count(DISTINCT p.groupid) FROM pg_catalog.pg_dist_shard s"
                " JOIN pg_catalog.pg_dist_placement p USING (shardid)"
                " WHERE s.logicalrelid = 'pybatch.heartbeats'::regclass"
            ).fetchone()
        layout = {name: (method, column, colocation) for name, method, column, colocation in rows}
        return judge_citus_layout(layout, (int(shape[0]), int(shape[1])) if shape else (0, 0))

    def pg_cron_preload(self) -> Check:
        if not self.scalar("SELECT pg_has_role('pg_read_all_settings', 'USAGE')"):
            return self._pg_cron_settings_hidden()
        self.cron_database = _optional_text(self.scalar("SELECT current_setting('cron.database_name', true)"))
        libraries = str(self.scalar("SELECT current_setting('shared_preload_libraries')"))
        preloaded = "pg_cron" in [name.strip().strip('"') for name in libraries.split(",")]
        if not preloaded:
            self.cron_database = None
            return Check(
                "pg_cron_preload",
                WARN,
                "pg_cron is not in shared_preload_libraries: add it and restart the server to flush with "
                "pg_cron, or run `pybatch scheduler`",
            )
        return Check("pg_cron_preload", OK, f"pg_cron preloaded (cron.database_name = {self.cron_database})")

    def _pg_cron_settings_hidden(self) -> Check:
        """shared_preload_libraries and cron.database_name are hidden from this role (superusers
        and pg_read_all_settings only, as on managed services). Whether pg_cron is loaded still
        shows (cron.pg_cron_loaded); its database is assumed to be pg_cron's default, and the
        checks that follow say so when pg_cron is not found there."""
        from pybatch.schedule import cron  # imported late: only the pg_cron checks need it

        user = str(self.scalar("SELECT current_user"))
        self.settings_hidden_from = user
        grant = f"GRANT pg_read_all_settings TO {user} lets doctor read them"
        loaded = cron.pg_cron_loaded(self.conn)
        if loaded is False:
            return Check(
                "pg_cron_preload",
                WARN,
                "pg_cron is not loaded (its settings do not exist): add it to shared_preload_libraries and "
                "restart the server to flush with pg_cron, or run `pybatch scheduler`",
            )
        if loaded is None:
            return Check(
                "pg_cron_preload",
                WARN,
                f"skipped: role {user} cannot read shared_preload_libraries or cron.database_name "
                f"(superuser or pg_read_all_settings only): {grant}",
            )
        self.cron_database = cron.DEFAULT_CRON_DATABASE
        return Check(
            "pg_cron_preload",
            OK,
            f"pg_cron is loaded; role {user} cannot read cron.database_name (superuser or "
            f"pg_read_all_settings only), so doctor assumes pg_cron's default, {self.cron_database} ({grant})",
        )

    def cron_connection(self) -> psycopg.Connection:
        assert self.cron_database is not None
        if self._cron_conn is None:
            if self.cron_database == self.dbname:
                self._cron_conn = self.conn
            else:
                self._cron_conn = db.connect_like(self.conn, dbname=self.cron_database)
        return self._cron_conn

    def pg_cron_extension(self) -> Check:
        if self.cron_database is None:
            if self.settings_hidden_from is not None:
                return Check("pg_cron_extension", WARN, "skipped: pg_cron's settings are not readable (see above)")
            return Check("pg_cron_extension", WARN, "skipped: pg_cron is not preloaded")
        try:
            row = (
                self.cron_connection()
                .execute("SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'pg_cron'")
                .fetchone()
            )
        except PybatchError:
            if self.settings_hidden_from is None:
                raise
            row = None
        if row is None and self.settings_hidden_from is not None:
            return Check(
                "pg_cron_extension",
                WARN,
                f"skipped: pg_cron is not in database {self.cron_database}, pg_cron's default cron.database_name; "
                f"role {self.settings_hidden_from} cannot read the real one: GRANT pg_read_all_settings TO "
                f"{self.settings_hidden_from} lets doctor find it",
            )
        if row is None:
            return Check(
                "pg_cron_extension",
                WARN,
                f"pg_cron is not installed: run `CREATE EXTENSION pg_cron` in database "
                f"{self.cron_database}, or run `pybatch scheduler`",
            )
        self.cron_version = str(row[0])
        return Check("pg_cron_extension", OK, f"pg_cron {self.cron_version} in database {self.cron_database}")

    def cron_job(self) -> Check:
        from pybatch.schedule import cron  # imported late: only this check needs it

        name = cron.flush_job_name(self.dbname)
        if self.cron_version is None and self.settings_hidden_from is not None:
            # pg_cron may well be there, in a database this role cannot name: nothing to conclude.
            return Check(
                "cron_job",
                SKIP,
                f"skipped: role {self.settings_hidden_from} cannot find pg_cron's database "
                f"(GRANT pg_read_all_settings TO {self.settings_hidden_from})",
            )
        if self.cron_version is None:
            return self._no_job(f"no pg_cron job {name} (pg_cron is not available)")
        state = cron.status(self.conn, cron_conn=self.cron_connection())
        if state.job is None:
            return self._no_job(f"no pg_cron job {name}")
        if not state.job.active:
            return Check("cron_job", FAIL, f"pg_cron job {name} is inactive: run `pybatch cron install`")
        self.cron_command = state.job.command
        if state.error is not None:  # the newest finished run failed; the message says what to do
            return Check("cron_job", FAIL, str(state.error))
        if ONE_TRANSACTION_FLUSH in state.job.command:
            return Check(
                "cron_job",
                WARN,
                f"pg_cron job {name} runs `{state.job.command}`: one transaction per flush, so its "
                "updates cannot stay HOT; run `pybatch cron install` again (it runs "
                "CALL pybatch.flush_in_passes(), which commits between passes)",
            )
        finished = [run for run in state.runs if run.status in ("succeeded", "failed")]
        last = f"last run succeeded at {finished[0].end_time}" if finished else "no finished run yet"
        return Check("cron_job", OK, f"pg_cron job {name} scheduled ({state.job.schedule}), {last}")

    def _no_job(self, what: str) -> Check:
        if self.flushes_arrive():
            return Check("cron_job", OK, f"{what}, but flushes arrive (another scheduler, e.g. `pybatch scheduler`)")
        return Check("cron_job", FAIL, f"{what} and no recent flush: run `pybatch cron install` or `pybatch scheduler`")

    def job_run_details(self) -> Check:
        if self.cron_version is None:
            return Check("job_run_details", OK, "skipped: no pg_cron")
        limit = self.limits.job_run_details_max_rows
        cron = self.cron_connection()
        with db.translated("cannot read cron.job_run_details"):
            # A bounded count: cheap even when the table is huge.
            row = cron.execute(
                "SELECT count(*), pg_catalog.pg_total_relation_size('cron.job_run_details') "
                "FROM (SELECT FROM cron.job_run_details LIMIT %s) s",
                (limit + 1,),
            ).fetchone()
        assert row is not None
        rows, size = int(row[0]), int(row[1])
        if rows > limit:
            return Check(
                "job_run_details",
                WARN,
                f"cron.job_run_details holds over {limit} rows ({size // 1048576} MB); pg_cron never "
                "purges it: DELETE FROM cron.job_run_details WHERE end_time < now() - interval '7 days'",
            )
        return Check("job_run_details", OK, f"cron.job_run_details holds {rows} rows ({size // 1024} kB)")

    def flushes(self) -> Check:
        health = self.health
        level = {"ok": OK, "late": WARN, "behind": WARN}.get(health.status, FAIL)
        message = f"{health.status}: {health.reason}"
        if health.worst_staleness is not None:
            message += f"; measured worst staleness {_secs(health.worst_staleness)}"
        return Check("flushes", level, message)

    def staleness_budget(self) -> Check:
        budget = settings.stored_staleness_budget(self.conn)
        level = {"ok": OK, "tight": WARN}.get(budget.verdict, FAIL)
        message = f"{budget.verdict}: {budget.reason}"
        if level != OK:
            message += (
                " (`pybatch config set flush_interval ...`; set heartbeat_period and client_write_interval "
                "to what your servers and clients use)"
            )
        return Check("staleness_budget", level, message)

    def pending_and_quarantine(self) -> Check:
        staging = status.staging(self.conn)
        parts: list[str] = []
        level = OK
        if staging.quarantined_agents:
            level = WARN
            since = (
                staging.oldest_quarantined_at.isoformat(timespec="seconds") if staging.oldest_quarantined_at else "-"
            )
            parts.append(
                f"{staging.quarantined_agents} agent(s) quarantined ({staging.quarantined_beats} heartbeats kept), "
                f"the oldest since {since}, e.g. agent {staging.quarantine_sample_agent}: "
                f"{_one_line(staging.quarantine_sample_error)}; their merge fails alone (a trigger or constraint "
                "on public.workspace_agents?): fix the cause, then SELECT pybatch.requeue_quarantined()"
            )
        else:
            parts.append("no agent quarantined")
        if staging.pending_agents is None:
            parts.append("pending: not readable on a hot standby")
        else:
            patience = self.health.flush_interval * self.limits.pending_patience_intervals
            age = staging.oldest_pending_age
            text = (
                f"pending: {staging.pending_agents} agent(s) handed off and not merged yet "
                f"({staging.deferred_agents} deferred because their row was locked)"
            )
            if staging.pending_agents and age is not None and age > patience:
                level = WARN
                text += (
                    f", the oldest beat waiting {_secs(age)}: a transaction keeps those rows locked "
                    "(see pg_locks on public.workspace_agents)"
                )
            parts.append(text)
        return Check("pending_and_quarantine", level, "; ".join(parts))

    def table_shape(self) -> Check:
        shape = status.table_shape(self.conn)
        message = (
            f"public.workspace_agents: fillfactor {shape.fillfactor}, {_size(shape.heap_bytes)} heap "
            f"({shape.heap_pages} pages), {shape.live_rows} live rows, "
            f"{shape.rows_per_page if shape.rows_per_page is not None else '-'} per page, "
            f"average row {shape.avg_row_bytes if shape.avg_row_bytes is not None else '-'} B, "
            f"{shape.unused_percent if shape.unused_percent is not None else '-'} % of the heap unused "
            f"(free or dead; {shape.method}); {shape.index_count} index(es), {_size(shape.index_bytes)}"
        )
        if shape.indexed_flushed_columns:
            return Check(
                "table_shape",
                WARN,
                f"{message}; indexes cover {', '.join(shape.indexed_flushed_columns)}, which every merge "
                "writes: those updates can never be HOT; drop those indexes if you can",
            )
        return Check("table_shape", OK, message)

    def staging_growth(self) -> Check:
        staging = status.staging(self.conn)
        if not staging.available:
            return Check("staging_growth", OK, f"skipped: {staging.reason}")
        interval = self.health.flush_interval
        limit = interval * self.limits.stalled_intervals
        age = staging.oldest_beat_age
        if staging.rows_staged and age is not None and age > limit:
            approx = "about " if staging.estimated else ""
            return Check(
                "staging_growth",
                FAIL,
                f"staging holds {approx}{staging.rows_staged} heartbeats and the oldest has waited "
                f"{_secs(age)} (over {self.limits.stalled_intervals} flush intervals): nothing drains it; "
                "check the scheduler (`pybatch cron status`) or run `pybatch flush`",
            )
        cap = settings.read_settings(self.conn).max_rows_per_flush
        if cap is not None and staging.rows_staged is not None and staging.rows_staged > cap:
            return Check(
                "staging_growth",
                WARN,
                f"staging holds about {staging.rows_staged} heartbeats, more than one flush drains "
                f"(max_rows_per_flush {cap}): catching up takes several passes",
            )
        return Check(
            "staging_growth",
            OK,
            f"staging holds {staging.rows_staged} heartbeats"
            + (f", oldest {_secs(age)} old" if age is not None else ""),
        )

    def _recent(self) -> list[status.FlushRecord]:
        return [f for f in status.recent_flushes(self.conn, self.limits.recent_flushes) if f.succeeded]

    def hot_updates(self) -> Check:
        flushes = self._recent()
        updated = sum(f.agents_updated for f in flushes)
        hot = sum(f.hot_updates for f in flushes)
        shape = status.table_shape(self.conn)
        causes = Causes(
            indexed=shape.indexed_flushed_columns,
            cron_command=self.cron_command,
            old_snapshot=self._old_snapshot(),
            xmin_holders=self._xmin_holders(),
        )
        return judge_hot(updated, hot, len(flushes), shape.fillfactor, causes, self.limits)

    def _old_snapshot(self) -> str | None:
        """The oldest snapshot another session holds, if older than the threshold: it keeps old row
        versions alive, so pages cannot be pruned and updates cannot stay HOT."""
        with db.translated("cannot read pg_stat_activity"):
            row = self.conn.execute(
                "SELECT a.pid, a.usename, a.application_name, "
                "extract(epoch FROM now() - coalesce(a.xact_start, a.query_start))::float8 "
                "FROM pg_catalog.pg_stat_activity a WHERE a.backend_xmin IS NOT NULL "
                "AND a.pid <> pg_catalog.pg_backend_pid() AND a.datname = current_database() "
                "AND now() - coalesce(a.xact_start, a.query_start) > make_interval(secs => %s) "
                "ORDER BY a.xact_start LIMIT 1",
                (self.limits.old_snapshot_seconds,),
            ).fetchone()
        if row is None:
            return None
        pid, user, app, seconds = row
        return f"pid {pid} (role {user}, application {app or '?'}) has held a snapshot for {seconds:.0f}s"

    def _xmin_holders(self) -> list[str]:
        """Standbys (hot_standby_feedback) and replication slots whose xmin is old: like an old
        snapshot here, they keep the row versions the merge replaces from being pruned."""
        with db.translated("cannot read pg_stat_replication and pg_replication_slots"):
            rows = self.conn.execute(
                "SELECT 'standby ' || coalesce(nullif(r.application_name, ''), 'pid ' || r.pid) || ' at '"
                " || coalesce(pg_catalog.host(r.client_addr), 'the local socket')"
                " || ' (hot_standby_feedback: a query or transaction open on it)', pg_catalog.age(r.backend_xmin) "
                "FROM pg_catalog.pg_stat_replication r "
                "WHERE r.backend_xmin IS NOT NULL AND pg_catalog.age(r.backend_xmin) >= %s "
                "UNION ALL "
                "SELECT 'replication slot ' || s.slot_name || ' (' || s.slot_type"
                " || CASE WHEN s.active THEN ', active' ELSE ', inactive: drop it if nothing uses it' END || ')',"
                " pg_catalog.age(s.xmin) "
                "FROM pg_catalog.pg_replication_slots s WHERE s.xmin IS NOT NULL AND pg_catalog.age(s.xmin) >= %s "
                "ORDER BY 2 DESC",
                (self.limits.xmin_age_min, self.limits.xmin_age_min),
                prepare=False,
            ).fetchall()
        return [f"{what} holds xmin {age} transactions old" for what, age in rows]

    def table_growth(self) -> Check:
        sized = [f for f in self._recent() if f.heap_bytes is not None and f.index_bytes is not None]
        # On Citus each shard group's flush measures its own agents shard on its worker; flush_log
        # holds the sums (the coordinator's table is an empty shell).
        scope = (
            " (summed over the shards of public.workspace_agents, as each shard's flush measured them)"
            if status.citus_table(self.conn)
            else ""
        )
        return judge_growth(sized, self.limits, scope)


@dataclass(frozen=True)
class Causes:
    """What doctor found that keeps merge updates from being HOT."""

    indexed: list[str] = field(default_factory=list)  # flushed columns an index covers
    cron_command: str | None = None  # the pg_cron job's command, if there is a job
    old_snapshot: str | None = None  # a session holding back pruning
    xmin_holders: list[str] = field(default_factory=list)  # standbys and slots holding back pruning


CITUS_TABLES = ["public.workspace_agents", "pybatch.heartbeats", "pybatch.pending", "pybatch.quarantine"]
CITUS_FIX = "SELECT pybatch.citus_distribute() on the coordinator"


def judge_citus_layout(layout: dict[str, tuple[str | None, str | None, int | None]], groups: tuple[int, int]) -> Check:
    """layout: table -> (partmethod, distribution column, colocationid), all None for a local table;
    groups: (shard groups of staging, nodes holding them)."""
    agents_method, agents_column, agents_colocation = layout["public.workspace_agents"]
    ours = CITUS_TABLES[1:]
    if agents_method is None:
        distributed = [t for t in ours if layout[t][0] is not None]
        if distributed:
            return Check(
                "citus_layout",
                FAIL,
                f"public.workspace_agents is a local table but {', '.join(distributed)} "
                "distributed: the flush cannot merge them; undistribute them "
                "(SELECT undistribute_table('<table>')) or distribute public.workspace_agents by id and "
                f"run {CITUS_FIX}",
            )
        return Check(
            "citus_layout",
            OK,
            "Citus coordinator with public.workspace_agents a local table: pybatch works as on plain "
            "PostgreSQL (staging and flush on the coordinator); to spread it: SELECT "
            f"create_distributed_table('public.workspace_agents', 'id'), then {CITUS_FIX}",
        )
    if agents_method != "h" or agents_column != "id":
        kind = {"n": "a reference or Citus local table"}.get(agents_method or "", f"method {agents_method}")
        return Check(
            "citus_layout",
            FAIL,
            f"public.workspace_agents is distributed by {agents_column or 'no column'} ({kind}): pybatch "
            "needs it hash-distributed by id (SELECT alter_distributed_table('public.workspace_agents', "
            "distribution_column => 'id')), or local",
        )
    problems = []
    for table in ours:
        method, column, colocation = layout[table]
        if method is None:
            problems.append(f"{table} is a local table (run {CITUS_FIX})")
        elif method != "h" or column != "agent_id":
            problems.append(
                f"{table} is distributed by {column or 'no column'} (method {method}), not hash by "
                f"agent_id (SELECT undistribute_table('{table}'), then {CITUS_FIX})"
            )
        elif colocation != agents_colocation:
            problems.append(
                f"{table} is not co-located with public.workspace_agents (colocation {colocation}, "
                f"not {agents_colocation}: SELECT update_distributed_table_colocation('{table}', "
                "colocate_with => 'public.workspace_agents'))"
            )
    if problems:
        return Check(
            "citus_layout",
            FAIL,
            "public.workspace_agents is hash-distributed by id, but "
            + "; ".join(problems)
            + ": shard-local flushes need staging beside each agents shard",
        )
    shard_groups, nodes = groups
    return Check(
        "citus_layout",
        OK,
        "public.workspace_agents hash-distributed by id; pybatch.heartbeats, pending and quarantine by "
        f"agent_id, co-located with it (colocation {agents_colocation}, {shard_groups} shard groups on "
        f"{nodes} node(s)): flushes run shard-local on the workers",
    )


def judge_server_version(number: int, text: str, minimum: int) -> Check:
    if number < minimum:
        return Check(
            "server_version", FAIL, f"PostgreSQL {text} is not supported: pybatch supports {versions.SUPPORTED}"
        )
    if versions.major(number) > versions.MAX_TESTED_MAJOR:
        return Check(
            "server_version",
            WARN,
            f"PostgreSQL {text} is newer than the majors pybatch is tested on ({versions.SUPPORTED})",
        )
    return Check("server_version", OK, f"PostgreSQL {text} (supported: {versions.SUPPORTED})")


def judge_hot(updated: int, hot: int, flushes: int, fillfactor: int, causes: Causes, limits: Thresholds) -> Check:
    """HOT ratio of the merge over recent flushes (flush_log), with the causes doctor found when
    it is low. Committed passes keep the merge HOT at any fillfactor, 100 included, without
    altering or rewriting the table; what defeats them is listed."""
    if updated < limits.hot_min_updates:
        return Check(
            "hot_updates",
            OK,
            f"{updated} merge updates over the last {flushes} flush(es): too few to judge HOT ({hot} HOT)",
        )
    ratio = hot / updated
    summary = (
        f"{ratio:.0%} of {updated} merge updates over the last {flushes} flushes were HOT (fillfactor {fillfactor})"
    )
    if ratio >= limits.hot_ratio_min:
        return Check("hot_updates", OK, summary)
    advice = []
    if causes.indexed:
        advice.append(
            f"indexes on {', '.join(causes.indexed)} (columns the merge writes) make every update "
            "non-HOT: drop them if you can"
        )
    if causes.cron_command is not None and ONE_TRANSACTION_FLUSH in causes.cron_command:
        advice.append(
            f"the pg_cron job runs `{causes.cron_command}`, one transaction per flush: run `pybatch cron install` again"
        )
    if causes.old_snapshot:
        advice.append(f"{causes.old_snapshot}: old row versions cannot be pruned until it ends")
    for holder in causes.xmin_holders:
        advice.append(
            f"{holder}: old row versions cannot be pruned here until it moves on (end long queries on "
            "the standby, or turn hot_standby_feedback off and accept query cancellations there)"
        )
    if not advice:
        advice.append(
            "flushes run as SELECT pybatch.flush() in one transaction (an app, or an old pg_cron job) "
            "cannot prune between passes: flush with CALL pybatch.flush_in_passes(), `pybatch flush`, "
            "`pybatch scheduler` or `pybatch cron install`; after a bulk load the first rounds are "
            "non-HOT until each page has room for one new version, which settles by itself; a snapshot "
            "held through a flush (autovacuum's ANALYZE of a large workspace_agents, a long report, "
            "pg_dump) makes the passes it overlaps non-HOT at fillfactor 100, once; check that "
            "autovacuum keeps up on public.workspace_agents"
        )
    return Check(
        "hot_updates", WARN, f"{summary}: " + "; ".join(advice) + " (no fillfactor change or VACUUM FULL is needed)"
    )


def judge_growth(flushes: list[status.FlushRecord], limits: Thresholds, scope: str = "") -> Check:
    """Heap and index growth of public.workspace_agents across recent flushes (newest first);
    scope says where the sizes come from (Citus: the shards), after the figures."""
    if len(flushes) < 2:
        return Check("table_growth", OK, f"{len(flushes)} flush(es) with sizes recorded: too few to judge growth")
    newest, oldest = flushes[0], flushes[-1]
    assert newest.heap_bytes is not None and oldest.heap_bytes is not None
    assert newest.index_bytes is not None and oldest.index_bytes is not None
    grown = []
    parts = []
    for what, before, after in (
        ("heap", oldest.heap_bytes, newest.heap_bytes),
        ("indexes", oldest.index_bytes, newest.index_bytes),
    ):
        change = (after - before) / before if before else 0.0
        parts.append(f"{what} {_size(before)} -> {_size(after)} ({change:+.0%})")
        if change > limits.growth_max and after - before >= limits.growth_min_bytes:
            grown.append(what)
    summary = f"over the last {len(flushes)} flushes: " + ", ".join(parts) + scope
    if not grown:
        return Check("table_growth", OK, summary)
    return Check(
        "table_growth",
        WARN,
        f"{summary}: the {' and '.join(grown)} grew over {limits.growth_max:.0%}; new agents grow "
        "them too, but with no new agents it means non-HOT merge updates (see hot_updates). Once "
        "updates are HOT the sizes stop growing and the space is reused; VACUUM FULL is not needed",
    )


def _size(value: int) -> str:
    return f"{value / 1048576:.1f} MB" if value >= 1048576 else f"{value / 1024:.0f} kB"


def _optional_text(value: object) -> str | None:
    return None if value is None or value == "" else str(value)


def _one_line(message: object) -> str:
    text = str(message or "").strip()
    return text.splitlines()[0] if text else "(no message)"


def _secs(age: timedelta) -> str:
    return f"{age.total_seconds():.0f}s"
