"""Run the bench: each strategy in turn, against the same workspace_agents reset to the
same state, under the same simulated fleet, measured over a window of whole flush intervals.

The default target is Coder's real workspace_agents (pybatch.bench.target). The window
starts after a warm-up of at least WARMUP_FLUSHES flush intervals (and one period), so it
measures the steady state, not the first round after loading the table.

Time compression divides every interval (period, flush interval, the app batcher's wait,
the buffered client's write interval) by one factor, so all of them keep their ratios;
batch sizes stay as they are. Per-heartbeat figures are comparable across factors;
rates and staleness are reported in fleet (uncompressed) time.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psutil
import psycopg
from psycopg import sql

from pybatch import __version__, db, resources
from pybatch.bench.fleet import BENCH_ID_SPAN, Fleet, LoadGenerator, agent_ids
from pybatch.bench.measure import (
    ServerCpu,
    StalenessMonitor,
    TableCounters,
    backend_pid,
    keep_wal,
    percentile,
    read_counters,
    relation_update_records,
    wal_records,
    walinspect_schema,
)
from pybatch.bench.strategies import (
    STRATEGY_NAMES,
    Flusher,
    FlushLogWatcher,
    ScheduledFlush,
    Strategy,
    Timing,
    make_strategy,
)
from pybatch.bench.target import bench_target, check_table, growth, is_scratch, table_sizes
from pybatch.errors import ConfigError, PybatchError

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
PROGRESS_EVERY_S = 5.0
WARMUP_FLUSHES = 5  # the window starts after this many flush intervals at least (steady state)


@dataclass(frozen=True)
class BenchConfig:
    """What to run. Durations are in fleet seconds (before compression)."""

    agents: int = 10_000
    period_s: float = 15.0
    flush_interval_s: float = 5.0  # pybatch's default since migration 0004
    seconds: float = 60.0  # the measured window per strategy, rounded up to whole flush intervals
    compress: float = 1.0
    strategies: tuple[str, ...] = STRATEGY_NAMES
    fillfactor: int | None = None  # set on workspace_agents before the runs; None keeps the table's
    workers: int = 4
    warmup_s: float | None = None  # None: WARMUP_FLUSHES flush intervals, or one period plus one if longer
    app_batch_size: int = 500
    app_batch_wait_s: float = 5.0
    write_interval_s: float = 1.0
    external_flush: bool = False  # flushes come from pg_cron; the bench watches pybatch.flush_log
    # "coder": Coder's real table in a scratch database (pybatch bench's default); "minimal": the
    # database's own pybatch-created table (what library callers such as the demo get by default).
    table: str = "minimal"

    def __post_init__(self) -> None:
        if self.agents < 1:
            raise ConfigError(f"agents: {self.agents} must be at least 1")
        if self.compress < 1:
            raise ConfigError(f"compress: {self.compress:g} must be at least 1")
        if self.workers < 1:
            raise ConfigError(f"workers: {self.workers} must be at least 1")
        if self.fillfactor is not None and not 10 <= self.fillfactor <= 100:
            raise ConfigError(f"fillfactor: {self.fillfactor} must be between 10 and 100")
        check_table(self.table)
        if self.external_flush and self.table == "coder":
            raise ConfigError(
                "table: 'coder' runs in a scratch database that no pg_cron job flushes; "
                "use 'minimal' with external_flush"
            )
        if not self.strategies:
            raise ConfigError("strategies: name at least one of " + ", ".join(STRATEGY_NAMES))
        for name in self.strategies:
            if name not in STRATEGY_NAMES:
                raise ConfigError(f"strategies: unknown strategy {name!r} (choose from {', '.join(STRATEGY_NAMES)})")
        for label, value in (
            ("period", self.period_s),
            ("flush interval", self.flush_interval_s),
            ("seconds", self.seconds),
        ):
            if not value > 0:
                raise ConfigError(f"{label}: {value:g} must be positive")

    @property
    def flushes_per_window(self) -> int:
        return max(1, math.ceil(self.seconds / self.flush_interval_s - 1e-9))

    @property
    def window_s(self) -> float:
        return self.flushes_per_window * self.flush_interval_s

    @property
    def warmup(self) -> float:
        if self.warmup_s is not None:
            return self.warmup_s
        return max(self.period_s + self.flush_interval_s, WARMUP_FLUSHES * self.flush_interval_s)

    def timing(self) -> Timing:
        return Timing(
            flush_interval_s=self.flush_interval_s / self.compress,
            app_batch_wait_s=self.app_batch_wait_s / self.compress,
            write_interval_s=self.write_interval_s / self.compress,
            app_batch_size=self.app_batch_size,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "agents": self.agents,
            "period_s": self.period_s,
            "flush_interval_s": self.flush_interval_s,
            "seconds": self.window_s,
            "seconds_requested": self.seconds,
            "compress": self.compress,
            "strategies": list(self.strategies),
            "fillfactor": self.fillfactor,
            "workers": self.workers,
            "warmup_s": self.warmup,
            "app_batch_size": self.app_batch_size,
            "app_batch_wait_s": self.app_batch_wait_s,
            "write_interval_s": self.write_interval_s,
            "flush_by": "pg_cron (watched in pybatch.flush_log)" if self.external_flush else "bench flush thread",
            "offered_beats_per_s": self.agents / self.period_s,
            "table": self.table,
        }


def compression_note(config: BenchConfig) -> str | None:
    if config.compress == 1:
        return None
    c = config.compress
    return (
        f"time compressed {c:g}x: period {config.period_s:g}s runs as {config.period_s / c:g}s, "
        f"flush interval {config.flush_interval_s:g}s as {config.flush_interval_s / c:g}s "
        f"(app batch wait and client write interval likewise); rates and staleness are in "
        f"uncompressed time, per-heartbeat figures are unaffected"
    )


@dataclass
class BenchReport:
    parameters: dict[str, Any]
    machine: dict[str, Any]
    target_table: dict[str, Any]
    strategies: dict[str, dict[str, Any]] = field(default_factory=dict)
    time_compression: str | None = None
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    def as_dict(self) -> dict[str, Any]:
        return {
            "pybatch_version": __version__,
            "started_at": self.started_at,
            "parameters": self.parameters,
            "time_compression": self.time_compression,
            "machine": self.machine,
            "target_table": self.target_table,
            "strategies": self.strategies,
        }


def run_bench(dsn: str, config: BenchConfig, *, progress: Progress | None = None) -> BenchReport:
    """Run every strategy of config in turn on the database at dsn and return the figures."""
    say = progress or (lambda message: None)
    with bench_target(dsn, config.table, say) as target:
        with db.connect(target) as admin:
            check_bench_database(admin, config.agents)
            if config.fillfactor is not None:
                set_fillfactor(admin, config.fillfactor)
            reset_agents(admin, config.agents, config.table)
            report = BenchReport(
                parameters=config.as_dict(),
                machine=describe_machine(admin),
                target_table=describe_target(admin),
                time_compression=compression_note(config),
            )
        if report.time_compression:
            say(report.time_compression)
        for name in config.strategies:
            say(f"[{name}] resetting {config.agents} agents (VACUUM FULL, ANALYZE, CHECKPOINT)")
            with db.connect(target) as admin:
                reset_agents(admin, config.agents, config.table)
            report.strategies[name] = run_strategy(target, name, config, say)
            say(
                f"[{name}] done: "
                + ", ".join(
                    f"{key}={value:g}"
                    for key, value in report.strategies[name].items()
                    if key in ("cpu_us_per_beat", "wal_bytes_per_beat", "hot_share", "heap_growth_pct")
                    and value is not None
                )
            )
        if "direct" in report.strategies:
            add_ratios(report.strategies)
    return report


def add_ratios(strategies: dict[str, dict[str, Any]]) -> None:
    """Each strategy's WAL and CPU per heartbeat as a multiple of direct's (one UPDATE per beat)."""
    direct = strategies["direct"]
    for figures_ in strategies.values():
        for key, ratio in (("wal_bytes_per_beat", "wal_vs_direct"), ("cpu_us_per_beat", "cpu_vs_direct")):
            mine, theirs = figures_.get(key), direct.get(key)
            figures_[ratio] = round(mine / theirs, 3) if mine is not None and theirs else None


def run_strategy(dsn: str, name: str, config: BenchConfig, say: Progress) -> dict[str, Any]:
    timing = config.timing()
    fleet = Fleet(config.agents, config.period_s / config.compress, config.workers)
    monitor_interval = min(0.5, timing.flush_interval_s / 10, fleet.period_s / 10)
    with db.connect(dsn) as measure_conn:
        cpu = ServerCpu.find(measure_conn)
        monitor = StalenessMonitor(dsn, BENCH_ID_SPAN, monitor_interval)
        strategy = make_strategy(name, dsn, config.workers, timing)
        flusher: Flusher | None = None
        if strategy.uses_flush:
            flusher = FlushLogWatcher(dsn) if config.external_flush else ScheduledFlush(dsn, timing.flush_interval_s)
        if cpu is not None:
            cpu.excluded_pids = {backend_pid(measure_conn), monitor.pid}
            if isinstance(flusher, FlushLogWatcher):
                cpu.excluded_pids.add(backend_pid(flusher.conn))
        loaded = table_sizes(measure_conn)
        walinspect = walinspect_schema(measure_conn, may_install=is_scratch(measure_conn))
        if walinspect is not None:
            keep_wal(measure_conn)
        load = LoadGenerator(fleet, strategy.beat)
        try:
            load.start()
            if flusher is not None:
                flusher.start(load.started_at)
            say(f"[{name}] warm-up {config.warmup:g}s of fleet time")
            _wait_until(load.started_at + config.warmup / config.compress, load, say, name, "warm-up")

            # Window start: just after a flush (staging freshly drained), or on the clock. Each
            # end is read while no flush or batch is under way (held), so the WAL and the table
            # statistics count the same writes: a flush at the edge is wholly in or wholly out.
            first_flush = 0
            if flusher is not None:
                first_flush = flusher.completed + 1
                flusher.hold_after(first_flush)
                window_start = flusher.wait_completed(first_flush, _flush_timeout(timing)).started
            else:
                window_start = time.monotonic()
            with strategy.quiet():
                start_counters, cpu_start = _boundary(measure_conn, cpu, strategy, timing)
                start_sizes = table_sizes(measure_conn)
            monitor.start()
            say(f"[{name}] measuring {config.window_s:g}s of fleet time")

            if flusher is not None:
                # The window's last flush, and none after it until its end is read.
                flusher.hold_after(first_flush + config.flushes_per_window)
                _wait_until(window_start + config.window_s / config.compress, load, say, name, "measuring")
                last = flusher.wait_completed(first_flush + config.flushes_per_window, _flush_timeout(timing))
                window_end = last.started
            else:
                window_end = window_start + config.window_s / config.compress
                _wait_until(window_end, load, say, name, "measuring")
            with strategy.quiet():
                end_counters, cpu_end = _boundary(measure_conn, cpu, strategy, timing)
                end_sizes = table_sizes(measure_conn)
            if flusher is not None:
                flusher.hold_after(None)
        finally:
            monitor.stop()
            load.stop()
            if flusher is not None:
                flusher.stop()
            strategy.close()
        window = load.window(window_start, window_end)
        records = wal_records(measure_conn, walinspect, start_counters.wal_bytes, end_counters.wal_bytes, window.beats)
        updates = relation_update_records(
            measure_conn,
            walinspect,
            start_counters.wal_bytes,
            end_counters.wal_bytes,
            ("public.workspace_agents", "pybatch.flush_log"),
        )
    # The flushes that merged the window's beats: those that started after its first flush, up to its last.
    writes = [w for w in (flusher.writes if flusher else strategy.writes) if window_start < w.started <= window_end]
    counters = end_counters.minus(start_counters)
    if isinstance(flusher, FlushLogWatcher):
        # pg_cron's loop procedure never goes idle between flushes, so its table statistics
        # arrive only when the call ends: count the rows from pybatch.flush_log instead.
        counters = TableCounters(
            counters.wal_bytes,
            sum(w.rows for w in writes),
            hot_updates=-1,
            log_updates=sum(w.log_updates for w in writes),
        )
    result = figures(
        config,
        strategy,
        window.beats,
        window.latencies_s,
        window.max_lag_s,
        counters,
        None if cpu_start is None or cpu_end is None else cpu_end - cpu_start,
        [w.duration_s for w in writes],
        len(writes),
        (window_end - window_start) * config.compress,
        None if monitor.worst_s is None else monitor.worst_s * config.compress,
        sizes={"loaded": loaded, "start": start_sizes, "end": end_sizes},
    )
    result["wal_records_per_beat"] = records
    result["update_records_per_beat"] = (
        None if updates is None or not window.beats else round(updates / window.beats, 4)
    )
    return result


def figures(
    config: BenchConfig,
    strategy: Strategy,
    beats: int,
    latencies_s: list[float],
    max_lag_s: float,
    counters: TableCounters,
    cpu_s: float | None,
    write_durations_s: list[float],
    batch_statements: int,
    window_fleet_s: float,
    staleness_s: float | None,
    sizes: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The figures of one strategy (the JSON keys under strategies.<name>)."""
    per_beat = 1 / beats if beats else math.nan
    statements = beats * strategy.target_statements_per_beat + batch_statements

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 3)

    size_figures: dict[str, Any] = {}
    if sizes is not None:
        size_figures = growth(sizes["start"], sizes["end"])
        size_figures["heap_bytes_loaded"] = sizes["loaded"]["heap_bytes"]
        size_figures["index_bytes_loaded"] = sum(sizes["loaded"]["index_bytes"].values())
    return {
        "beats": beats,
        "window_s": round(window_fleet_s, 3),
        "beats_per_s": round(beats / window_fleet_s, 2),
        "cpu_us_per_beat": None if cpu_s is None else round(cpu_s * 1e6 * per_beat, 2),
        "wal_bytes_per_beat": round(counters.wal_bytes * per_beat, 1),
        "row_versions_per_beat": round(counters.row_updates * per_beat, 4),
        "row_versions_per_s": round(counters.row_updates / window_fleet_s, 2),
        "log_row_versions_per_beat": round(counters.log_updates * per_beat, 4),
        "hot_share": (
            round(counters.hot_updates / counters.row_updates, 4)
            if counters.row_updates and counters.hot_updates >= 0
            else None
        ),
        "statements_per_s": round(statements / window_fleet_s, 3),
        "beat_p50_ms": ms(percentile(latencies_s, 0.50)),
        "beat_p99_ms": ms(percentile(latencies_s, 0.99)),
        "beat_max_ms": ms(max(latencies_s, default=None)),
        "flush_p50_ms": ms(percentile(write_durations_s, 0.50)),
        "flush_max_ms": ms(max(write_durations_s, default=None)),
        "flushes": batch_statements,
        "staleness_max_s": None if staleness_s is None else round(staleness_s, 2),
        "beat_lag_max_s": round(max_lag_s * config.compress, 3),
        **size_figures,
    }


def _flush_timeout(timing: Timing) -> float:
    return max(60.0, timing.flush_interval_s * 6)


def _boundary(
    conn: psycopg.Connection,
    cpu: ServerCpu | None,
    strategy: Strategy,
    timing: Timing,
) -> tuple[TableCounters, float | None]:
    """The counters at one end of the window. CPU and WAL are exact at once; the table
    statistics are published by each backend up to ~1 s late (10 s when idle), so every
    backend that writes workspace_agents is made to publish them first (a flusher does
    after each flush, the app batcher after each batch, direct's workers on request)."""
    cpu_seconds = cpu.total_seconds() if cpu else None
    wal_bytes = read_counters(conn).wal_bytes
    strategy.publish_stats(timeout_s=max(5.0, timing.flush_interval_s))
    rows = read_counters(conn)
    return TableCounters(wal_bytes, rows.row_updates, rows.hot_updates, rows.log_updates), cpu_seconds


def _wait_until(deadline: float, load: LoadGenerator, say: Progress, name: str, phase: str) -> None:
    next_note = time.monotonic() + PROGRESS_EVERY_S
    while (now := time.monotonic()) < deadline:
        if load.failed:
            load.stop()  # raises the worker's error
        time.sleep(min(0.1, deadline - now))
        if time.monotonic() >= next_note:
            next_note += PROGRESS_EVERY_S
            say(
                f"[{name}] {phase}: {max(0.0, deadline - time.monotonic()):.0f}s left, "
                f"{load.beats_sent()} heartbeats sent"
            )


# -- the database ------------------------------------------------------------------------------


def check_bench_database(conn: psycopg.Connection, agents: int) -> None:
    """The bench rewrites workspace_agents: refuse a table that holds anything but bench agents."""
    lo, hi = BENCH_ID_SPAN
    with db.translated("cannot inspect public.workspace_agents"):
        row = conn.execute(
            "SELECT count(*) FROM public.workspace_agents WHERE id NOT BETWEEN %s AND %s",
            (lo, hi),
        ).fetchone()
        conn.execute("SELECT 1 FROM pybatch.heartbeats LIMIT 0")
    others = int(row[0]) if row else 0
    if others:
        raise PybatchError(
            f"public.workspace_agents holds {others} rows that are not bench agents: "
            "the bench resets that table, so run it against a database of its own"
        )


def set_fillfactor(conn: psycopg.Connection, fillfactor: int) -> None:
    with db.translated("cannot set the fillfactor of public.workspace_agents"):
        conn.execute(
            sql.SQL("ALTER TABLE public.workspace_agents SET (fillfactor = {})").format(sql.Literal(fillfactor))
        )


def reset_agents(conn: psycopg.Connection, agents: int, table: str = "minimal") -> None:
    """Same agents, same values, same pages for every strategy: delete the bench agents,
    rewrite the table (VACUUM FULL packs it to its fillfactor), insert them again, then
    VACUUM ANALYZE, and a CHECKPOINT so every run pays the same full-page writes."""
    lo, hi = BENCH_ID_SPAN
    with db.translated("cannot reset the bench agents"):
        conn.execute("DELETE FROM pybatch.heartbeats WHERE agent_id BETWEEN %s AND %s", (lo, hi))
        conn.execute("DELETE FROM pybatch.pending WHERE agent_id BETWEEN %s AND %s", (lo, hi))
        if table == "coder":
            _empty_coder_table(conn, agents)
        else:
            conn.execute("DELETE FROM public.workspace_agents WHERE id BETWEEN %s AND %s", (lo, hi))
            conn.execute("VACUUM FULL public.workspace_agents")
        conn.execute(
            resources.read_sql("bench/reset_agents_coder.sql" if table == "coder" else "bench/reset_agents.sql"),
            {"ids": agent_ids(agents), "created_at": datetime.now(UTC)},
        )
        conn.execute("VACUUM (ANALYZE) public.workspace_agents")
        conn.execute("VACUUM (ANALYZE) pybatch.heartbeats")
    try:
        conn.execute("CHECKPOINT")
    except psycopg.errors.InsufficientPrivilege:
        log.warning("CHECKPOINT not permitted: full-page writes will differ between runs")


def _empty_coder_table(conn: psycopg.Connection, agents: int) -> None:
    """Remove the bench agents from Coder's table. It references itself (parent_id, ON DELETE
    CASCADE) without an index on parent_id, so a DELETE of n agents scans the table n times
    (100,000 agents: over half an hour). It holds only bench agents (checked again here), so
    TRUNCATE empties it at once, unless other tables reference it (a real Coder schema): then
    the slow DELETE."""
    lo, hi = BENCH_ID_SPAN
    check_bench_database(conn, agents)
    try:
        with conn.transaction():
            conn.execute("TRUNCATE public.workspace_agents")
    except psycopg.errors.FeatureNotSupported:  # referenced by another table's foreign key
        conn.execute("DELETE FROM public.workspace_agents WHERE id BETWEEN %s AND %s", (lo, hi))
        conn.execute("VACUUM FULL public.workspace_agents")
    conn.execute("DELETE FROM public.workspace_resources WHERE id BETWEEN %s AND %s", (lo, hi))
    conn.execute("VACUUM FULL public.workspace_resources")


def describe_target(conn: psycopg.Connection) -> dict[str, Any]:
    with db.translated("cannot describe public.workspace_agents"):
        cur = conn.execute(resources.read_sql("bench/describe_target.sql"))
        row = cur.fetchone()
    assert row is not None and cur.description is not None
    return dict(zip([c.name for c in cur.description], row, strict=True))


def describe_machine(conn: psycopg.Connection) -> dict[str, Any]:
    server_version = conn.execute("SELECT pg_catalog.current_setting('server_version')").fetchone()
    return {
        "cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "cpu_model": _cpu_model(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "os": platform.platform(),
        "python": platform.python_version(),
        "postgresql": server_version[0] if server_version else None,
        "server_cpu_measured": ServerCpu.find(conn) is not None,
    }


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return platform.processor() or None
