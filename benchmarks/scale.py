"""The largest fleet one server sustains, on Coder's real table, against direct UPDATEs.

    .venv/bin/python benchmarks/scale.py --search                 # pybatch, then direct
    .venv/bin/python benchmarks/scale.py --agents 600000 --minutes 10 --plot scale.png

The server: a temporary cluster of this machine's PostgreSQL with its durability defaults
(fsync on, synchronous_commit on, full_page_writes on), shared_buffers sized for the table
(--shared-buffers, printed), max_wal_size 4GB. The table: Coder's workspace_agents
(sql/bench/coder_workspace_agents.sql: fillfactor 100, 4 indexes, a trigger, 2 foreign keys),
loaded with N agents of random-looking ids in creation order (pybatch.bench.fleet.agent_ids).

pybatch: every agent beats once per 15 s (agent i in second i mod 15). Each second two writer
connections COPY that second's beats into staging with the buffered client's own COPY
(pybatch._core.COPY_BEATS, in text format), stamped with their scheduled second, so a writer that falls
behind shows as staleness. The flush is scheduled as in production: pybatch's Scheduler
(`pybatch scheduler`) at the default flush interval (settings.flush_interval, 5 s).

Sampled every second, in slices of the heap so that the sample never holds a snapshot for long:
staleness = now() - min(last_connected_at) over all agents (the oldest agent's age, which
Coder compares with its 30 s inactive timeout) and the agents pybatch.agent_status's rule
shows as disconnected; at the end, the view itself is counted too. Sustained: every staleness sample at or under
--limit (27 s: a 3 s margin under the timeout), no agent shown disconnected, no failed flush.

Per run: server CPU per beat (every process of the cluster, including exited backends), WAL
and HOT per beat, heap growth, each flush's duration and passes (pybatch.flush_log), and the
flush backend's peak memory (VmHWM).

direct: one UPDATE per heartbeat (sql/bench/direct_update.sql's statement), as pgbench
clients at the fleet's rate (N/15 per second, -R), 8 connections, after a warm-up at that rate
as long as pybatch's. Sustained: pgbench keeps the rate (98 %) with the schedule lag under 1 s
on average and 15 s at most.

--search: for each strategy, doubles from --start (--direct-start) while sustained (one
--search-seconds run each), then bisects twice; then, with --minutes, one long run of pybatch at the largest
sustained size.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import psycopg
from psycopg import sql

from pybatch import db
from pybatch.bench.fleet import REPLICAS, agent_ids
from pybatch.bench.fleet_run import reset_agents
from pybatch.bench.target import bench_target
from pybatch.local import BASE_SETTINGS, LocalCluster, find_bindir, temporary_cluster
from pybatch.schedule.scheduler import Scheduler

PERIOD = 15  # s between two beats of one agent (Coder)
WRITERS = 2
DIRECT_CLIENTS = 8
SAMPLE_PAGES = 2000  # heap pages per statement of a staleness sample (~48,000 of Coder's rows)
# The buffered client's COPY (pybatch._core.COPY_BEATS), in text rather than binary format:
# the rows are prepared once, so the Python writers leave the cores to the server.
COPY_BEATS_TEXT = "COPY pybatch.heartbeats (agent_id, replica_id, beat_at) FROM STDIN"


@dataclass
class Sample:
    at: float  # s since the measured window began
    staleness: float | None
    flush_s: float | None = None  # the duration of the newest flush completed by then


@dataclass
class Run:
    strategy: str
    agents: int
    seconds: float
    sustained: bool
    worst_staleness_s: float | None = None
    disconnected_max: int = 0
    failed_flushes: int = 0
    flushes: int = 0
    flush_mean_s: float | None = None
    flush_max_s: float | None = None
    passes_median: float | None = None
    writer_lag_s: float = 0.0
    cpu_us_per_beat: float | None = None
    wal_bytes_per_beat: float | None = None
    hot_share: float | None = None
    heap_growth: float | None = None
    flush_peak_memory_mb: float | None = None
    sampler_cpu_share: float | None = None  # of one core: the staleness sample's own cost, left out of cpu_us_per_beat
    rate_target: float | None = None
    rate_achieved: float | None = None
    lag_avg_ms: float | None = None
    lag_max_ms: float | None = None
    statements: list[dict[str, Any]] = field(default_factory=list)  # --statements: where the server's time went
    samples: list[Sample] = field(default_factory=list)


def cluster_cpu_s(cluster: LocalCluster) -> float:
    """CPU seconds of the cluster: the postmaster, its live children, and the reaped ones."""
    pid = int((cluster.datadir / "postmaster.pid").read_text().split()[0])
    master = psutil.Process(pid)
    times = master.cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    for child in master.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            c = child.cpu_times()
            total += c.user + c.system
    return float(total)


def settle(cluster: LocalCluster, conn: psycopg.Connection, timeout: float = 30.0) -> None:
    """Wait until pgbench's backends have exited and the postmaster has reaped them: an exited
    backend's CPU moves into the postmaster's children times only when it is reaped, so a
    reading taken in between would count it in the next window (or in none)."""
    pid = int((cluster.datadir / "postmaster.pid").read_text().split()[0])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn.execute("SELECT pg_catalog.pg_stat_clear_snapshot()")
        left = conn.execute(
            "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE application_name = 'pgbench'"
        ).fetchone()
        children = psutil.Process(pid).children()
        zombies = [c for c in children if _status(c) == psutil.STATUS_ZOMBIE]
        if left is not None and left[0] == 0 and not zombies:
            return
        time.sleep(0.05)
    raise RuntimeError("pgbench's backends did not exit")


def _status(process: psutil.Process) -> str | None:
    try:
        return str(process.status())
    except psutil.NoSuchProcess:
        return None


def backend_cpu_s(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def counters(conn: psycopg.Connection) -> tuple[int, int, int, int]:
    conn.execute("SELECT pg_catalog.pg_stat_clear_snapshot()")
    row = conn.execute(
        "SELECT pg_catalog.pg_current_wal_lsn() - '0/0'::pg_lsn, n_tup_upd, n_tup_hot_upd,"
        " pg_catalog.pg_relation_size('public.workspace_agents')"
        " FROM pg_catalog.pg_stat_user_tables WHERE relid = 'public.workspace_agents'::regclass"
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2]), int(row[3])


def prepare(dsn: str, agents: int, warm_start: bool = False) -> None:
    with db.connect(dsn) as conn:
        conn.execute("TRUNCATE pybatch.heartbeats, pybatch.pending, pybatch.quarantine")
        conn.execute("DELETE FROM pybatch.flush_log")
        reset_agents(conn, agents, "coder")  # random ids, creation order, VACUUM ANALYZE, CHECKPOINT
        if warm_start:
            # A table in use: every agent has connected, so its row already has the width
            # the connection columns give it, packed at the table's fillfactor. Cold, each
            # first beat lengthens its row and moves it (non-HOT), and at 750,000 agents the
            # first flush did not end within the warm-up.
            conn.execute(
                "UPDATE public.workspace_agents SET first_connected_at = now(), last_connected_at = now(),"
                " last_connected_replica_id = %s, updated_at = now()",
                (REPLICAS[0],),
            )
            conn.execute("VACUUM (FULL, ANALYZE) public.workspace_agents")
            conn.execute("CHECKPOINT")


def run_pybatch(
    cluster: LocalCluster,
    dsn: str,
    agents: int,
    warmup: float,
    seconds: float,
    limit: float,
    warm_start: bool = False,
    statements: int = 0,
    lanes: int = 1,
) -> Run:
    prepare(dsn, agents, warm_start)
    ids = [str(i) for i in agent_ids(agents)]
    replica = [str(r) for r in REPLICAS]
    # Per second of the period and per writer: its agents' COPY rows, less the stamp.
    slots = [
        [
            [f"{ids[i]}\t{replica[i % len(replica)]}\t" for i in range(s + w * PERIOD, agents, PERIOD * WRITERS)]
            for w in range(WRITERS)
        ]
        for s in range(PERIOD)
    ]
    del ids
    stop = threading.Event()
    errors: list[BaseException] = []
    lag = [0.0] * WRITERS
    start = time.time() + 1.0
    epoch = datetime.fromtimestamp(start, UTC)

    def writer(w: int) -> None:
        try:
            with db.connect(dsn) as conn:
                tick = 0
                while not stop.is_set():
                    due = start + tick
                    if (pause := due - time.time()) > 0 and stop.wait(pause):
                        return
                    stamp = (epoch + timedelta(seconds=tick)).isoformat()
                    rows = slots[tick % PERIOD][w]
                    with conn.cursor() as cur, cur.copy(COPY_BEATS_TEXT) as copy:
                        copy.write(f"{stamp}\n".join(rows) + f"{stamp}\n")
                    lag[w] = max(lag[w], time.time() - (due + 1.0))
                    tick += 1
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    scheduler = Scheduler(dsn, lanes=lanes)  # settings.flush_interval, as `pybatch scheduler --lanes` runs it
    threads = [threading.Thread(target=writer, args=(w,), daemon=True) for w in range(WRITERS)]
    threads.append(threading.Thread(target=scheduler.run, daemon=True))
    for thread in threads:
        thread.start()
    run = Run("pybatch", agents, seconds, sustained=False)
    try:
        with db.connect(dsn) as conn:
            # The sample reads the whole table every second: in this one backend, never with
            # parallel workers (they would take the cores from the flush, and their CPU would
            # count as the fleet's).
            conn.execute("SET max_parallel_workers_per_gather = 0")
            time.sleep(max(0.0, start + warmup - time.time()))
            flush_pid = _flush_backend(conn)
            # Server CPU less this monitor's own backend (its samples are the bench's, not the fleet's).
            monitor = conn.info.backend_pid
            monitor0 = backend_cpu_s(monitor)
            if statements:
                conn.execute("SELECT public.pg_stat_statements_reset()")
            cpu0, (wal0, upd0, hot0, heap0) = cluster_cpu_s(cluster) - monitor0, counters(conn)
            began = time.time()
            first_flush = conn.execute("SELECT COALESCE(max(id), 0) FROM pybatch.flush_log").fetchone()[0]  # type: ignore[index]
            while (now := time.time()) < began + seconds and not errors:
                staleness, disconnected = sample_agents(conn)
                flushed = conn.execute(
                    "SELECT extract(epoch FROM duration)::float8 FROM pybatch.flush_log"
                    " WHERE completed_at IS NOT NULL ORDER BY id DESC LIMIT 1"
                ).fetchone()
                run.samples.append(Sample(round(now - began, 1), staleness, flushed[0] if flushed else None))
                run.disconnected_max = max(run.disconnected_max, disconnected)
                if staleness is None or staleness > limit + 20:
                    break  # far gone: no need to watch it fail for the whole window
                time.sleep(max(0.0, 1.0 - (time.time() - now)))
            elapsed = time.time() - began
            # The view itself, once at the end (a full scan holds its snapshot too long to repeat;
            # the sample applies its rule every second).
            counted = conn.execute("SELECT count(*) FROM pybatch.agent_status WHERE status = 'disconnected'").fetchone()
            run.disconnected_max = max(run.disconnected_max, int(counted[0]) if counted else 0)
            monitor1 = backend_cpu_s(monitor)
            cpu1, (wal1, upd1, hot1, heap1) = cluster_cpu_s(cluster) - monitor1, counters(conn)
            run.sampler_cpu_share = round((monitor1 - monitor0) / elapsed, 3)
            beats = agents * elapsed / PERIOD
            run.seconds = round(elapsed, 1)
            run.cpu_us_per_beat = round((cpu1 - cpu0) * 1e6 / beats, 1)
            run.wal_bytes_per_beat = round((wal1 - wal0) / beats, 1)
            run.hot_share = round((hot1 - hot0) / (upd1 - upd0), 4) if upd1 > upd0 else None
            run.heap_growth = round(heap1 / heap0 - 1, 4) if heap0 else None
            run.flush_peak_memory_mb = _peak_memory_mb(flush_pid)
            if statements:
                run.statements = top_statements(conn, statements, elapsed)
            flushes = conn.execute(
                "SELECT extract(epoch FROM duration)::float8, passes, error IS NOT NULL OR completed_at IS NULL"
                " FROM pybatch.flush_log WHERE id > %s ORDER BY id",
                (first_flush,),
            ).fetchall()
    finally:
        stop.set()
        scheduler.request_stop("bench over")
        for thread in threads:
            thread.join(timeout=120)
    if errors:
        raise errors[0]
    done = [f for f in flushes if not f[2]]
    run.flushes = len(flushes)
    run.failed_flushes = sum(1 for f in flushes[:-1] if f[2])  # the last may still run
    if done:
        run.flush_mean_s = round(statistics.mean(f[0] for f in done), 3)
        run.flush_max_s = round(max(f[0] for f in done), 3)
        run.passes_median = statistics.median(f[1] for f in done)
    stale = [s.staleness for s in run.samples]
    run.worst_staleness_s = None if None in stale or not stale else round(max(s for s in stale if s is not None), 1)
    run.writer_lag_s = round(max(lag), 2)
    run.sustained = (
        run.worst_staleness_s is not None
        and run.worst_staleness_s <= limit
        and run.disconnected_max == 0
        and run.failed_flushes == 0
        and run.seconds >= seconds - 2
    )
    return run


def sample_agents(conn: psycopg.Connection) -> tuple[float | None, int]:
    """The oldest agent's age (None while an agent never beat) and how many agents
    pybatch.agent_status would show as disconnected, read in slices of the heap: each slice is
    a statement of its own, so the sample never holds a snapshot for long (a snapshot held
    across a pass's commit keeps the next pass from pruning, and its updates go non-HOT)."""
    pages_row = conn.execute(
        "SELECT pg_catalog.pg_relation_size('public.workspace_agents')"
        " / pg_catalog.current_setting('block_size')::bigint"
    ).fetchone()
    pages = int(pages_row[0]) if pages_row else 0
    oldest: float | None = 0.0
    disconnected = 0
    for first in range(0, pages + 1, SAMPLE_PAGES):
        row = conn.execute(
            "SELECT extract(epoch FROM now() - min(wa.last_connected_at))::float8,"
            " count(*) FILTER (WHERE wa.last_connected_at IS NULL),"
            # pybatch.agent_status's 'disconnected' for agents that have connected (they all
            # have a last_connected_at), with the timeout's cutoff computed once, not per row.
            " count(*) FILTER (WHERE wa.disconnected_at >= wa.last_connected_at OR wa.last_connected_at"
            "   < now() - (SELECT s.inactive_timeout FROM pybatch.settings s))"
            " FROM public.workspace_agents wa"
            " WHERE wa.ctid >= pg_catalog.format('(%%s,0)', %(first)s::bigint)::tid"
            " AND wa.ctid < pg_catalog.format('(%%s,0)', %(last)s::bigint)::tid",
            {"first": first, "last": first + SAMPLE_PAGES},
        ).fetchone()
        assert row is not None
        disconnected += int(row[2])
        if row[1]:
            oldest = None
        elif row[0] is not None and oldest is not None:
            oldest = max(oldest, float(row[0]))
    return oldest, disconnected


def top_statements(conn: psycopg.Connection, limit: int, elapsed: float) -> list[dict[str, Any]]:
    """The statements that took the most time over the window (pg_stat_statements, nested
    statements included: each step of a flush is a statement of its own), with their share of
    the window's wall time (one core's worth is 1.0)."""
    rows = conn.execute(
        "SELECT calls, total_exec_time, rows, regexp_replace(query, '\\s+', ' ', 'g')"
        " FROM public.pg_stat_statements WHERE toplevel = false OR query NOT LIKE 'CALL%%'"
        " ORDER BY total_exec_time DESC LIMIT %s",
        (limit,),
    ).fetchall()
    return [
        {
            "calls": int(calls),
            "total_s": round(total_ms / 1000, 2),
            "mean_ms": round(total_ms / calls, 2) if calls else None,
            "rows": int(n),
            "share_of_a_core": round(total_ms / 1000 / elapsed, 3),
            "query": query[:200],
        }
        for calls, total_ms, n, query in rows
    ]


def _flush_backend(conn: psycopg.Connection) -> int | None:
    row = conn.execute(
        "SELECT pid FROM pg_catalog.pg_stat_activity WHERE query ~ 'flush_in_passes|flush_begin_lanes|flush_lane_pass'"
        " AND pid <> pg_catalog.pg_backend_pid() ORDER BY backend_start LIMIT 1"
    ).fetchone()
    return None if row is None else int(row[0])


def _peak_memory_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return None


DIRECT_SCRIPT = """\\set i random(1, {agents})
UPDATE public.workspace_agents wa
SET first_connected_at = COALESCE(wa.first_connected_at, now()), last_connected_at = now(),
    last_connected_replica_id = '{replica}', disconnected_at = NULL, updated_at = now()
FROM bench_ids b WHERE b.n = :i AND wa.id = b.id;
"""


def run_direct(
    cluster: LocalCluster, dsn: str, agents: int, warmup: float, seconds: float, warm_start: bool = False
) -> Run:
    """One UPDATE per beat (the direct strategy's statement) at the fleet's rate, with pgbench:
    a warm-up at that rate (every agent connects once, as pybatch's warm-up lets it), then the
    measured run."""
    prepare(dsn, agents, warm_start)
    with db.connect(dsn) as conn:
        # pgbench draws integers: a map from i to agent i's id (a primary-key lookup per
        # UPDATE, which direct pays and Coder's app would not: direct's ceiling is conservative).
        conn.execute("DROP TABLE IF EXISTS public.bench_ids")
        conn.execute("CREATE TABLE public.bench_ids (n integer PRIMARY KEY, id uuid NOT NULL)")
        with conn.cursor() as cur, cur.copy("COPY public.bench_ids (n, id) FROM STDIN") as copy:
            for n, agent in enumerate(agent_ids(agents), start=1):
                copy.write_row((n, agent))
        conn.execute("VACUUM ANALYZE public.bench_ids")
        rate = agents / PERIOD
        with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
            script.write(DIRECT_SCRIPT.format(agents=agents, replica=REPLICAS[0]))
        info = conn.info

        def pgbench(duration: float) -> str:
            command = [
                str(find_bindir() / "pgbench"),
                "-n",
                "-M",
                "prepared",
                "-c",
                str(DIRECT_CLIENTS),
                "-j",
                "2",
                "-R",
                str(rate),
                "-T",
                str(int(duration)),
                "-f",
                script.name,
                "-h",
                str(info.host),
                "-p",
                str(info.port),
                "-U",
                str(info.user),
                str(info.dbname),
            ]
            out = subprocess.run(command, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                raise RuntimeError(f"pgbench failed: {out.stderr.strip()[-500:]}")
            return out.stdout

        try:
            if warmup >= 1:
                pgbench(warmup)
                settle(cluster, conn)
            cpu0, (wal0, upd0, hot0, heap0) = cluster_cpu_s(cluster), counters(conn)
            stdout = pgbench(seconds)
            settle(cluster, conn)
            cpu1, (wal1, upd1, hot1, heap1) = cluster_cpu_s(cluster), counters(conn)
        finally:
            Path(script.name).unlink()
        conn.execute("DROP TABLE public.bench_ids")
    tps = float(re.search(r"tps = ([\d.]+)", stdout).group(1))  # type: ignore[union-attr]
    lag = re.search(r"schedule lag: avg ([\d.]+) \(max ([\d.]+)\) ms", stdout)
    lag_avg, lag_max = (float(lag.group(1)), float(lag.group(2))) if lag else (None, None)
    beats = upd1 - upd0
    run = Run("direct", agents, seconds, sustained=False, rate_target=round(rate, 1), rate_achieved=round(tps, 1))
    run.lag_avg_ms, run.lag_max_ms = lag_avg, lag_max
    if beats:
        run.cpu_us_per_beat = round((cpu1 - cpu0) * 1e6 / beats, 1)
        run.wal_bytes_per_beat = round((wal1 - wal0) / beats, 1)
        run.hot_share = round((hot1 - hot0) / beats, 4)
    run.heap_growth = round(heap1 / heap0 - 1, 4) if heap0 else None
    run.sustained = tps >= 0.98 * rate and lag_avg is not None and lag_avg < 1000 and (lag_max or 0) < 15000
    return run


def show(run: Run) -> None:
    d = asdict(run)
    d.pop("samples")
    d.pop("statements")
    verdict = "SUSTAINED" if run.sustained else "not sustained"
    figures = ", ".join(
        f"{k} {v}" for k, v in d.items() if v is not None and k not in ("strategy", "agents", "sustained")
    )
    print(f"{run.strategy:>8} {run.agents:>9,} agents: {verdict} | {figures}", flush=True)
    for st in run.statements:
        print(
            f"    {st['share_of_a_core']:>6.1%} of a core  {st['calls']:>6} calls  {st['mean_ms']:>9} ms each"
            f"  {st['rows']:>9} rows  {st['query'][:110]}",
            flush=True,
        )


def search(label: str, attempt: Any, first: int, largest: int) -> tuple[int | None, int | None, list[Run]]:
    runs: list[Run] = []
    passed: int | None = None
    failed: int | None = None
    n = first
    while n <= largest:
        runs.append(attempt(n))
        show(runs[-1])
        if runs[-1].sustained:
            passed, n = n, n * 2
        else:
            failed = n
            break
    for _ in range(2):
        if passed is None or failed is None:
            break
        middle = int(round((passed + failed) / 2, -4))
        if not passed < middle < failed:
            break
        runs.append(attempt(middle))
        show(runs[-1])
        if runs[-1].sustained:
            passed = middle
        else:
            failed = middle
    print(f"{label}: largest sustained {passed}, first not sustained {failed}", flush=True)
    return passed, failed, runs


def plot(run: Run, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4))
    xs = [s.at for s in run.samples]
    nan = float("nan")  # a gap, not a zero
    ax.plot(
        xs,
        [nan if s.staleness is None else s.staleness for s in run.samples],
        label="staleness (now - oldest last_connected_at), s",
    )
    ax.plot(xs, [nan if s.flush_s is None else s.flush_s for s in run.samples], label="newest flush duration, s")
    ax.axhline(30, color="red", linestyle="--", label="inactive timeout (30 s)")
    ax.set_xlabel("seconds into the measured window")
    ax.set_title(f"pybatch, {run.agents:,} agents on Coder's workspace_agents (lower is better)")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path)


@contextlib.contextmanager
def server(shared_buffers: str, server_log: str | None, statements: bool = False) -> Iterator[tuple[LocalCluster, str]]:
    settings = {
        "shared_buffers": f"'{shared_buffers}'",
        "max_wal_size": "'4GB'",
        # A statement of a flush slower than a flush interval is logged with its plan, so a
        # slow run says why (auto_explain costs nothing until a statement is that slow).
        "session_preload_libraries": "'auto_explain'",
        "auto_explain.log_min_duration": "'5s'",
        "auto_explain.log_nested_statements": "on",
        "log_autovacuum_min_duration": "'1s'",
        "log_temp_files": "'10MB'",  # a sort or hash that spilled to disk
    }
    if statements:
        # Every statement, nested ones too (a flush's steps run inside its procedure).
        preloaded = BASE_SETTINGS["shared_preload_libraries"].strip("'")
        settings["shared_preload_libraries"] = f"'{preloaded},pg_stat_statements'"
        settings["pg_stat_statements.track"] = "all"
    with temporary_cluster(settings, prefix="pybatch-scale-") as cluster:
        try:
            with bench_target(cluster.url(), "coder") as target:
                if statements:
                    with db.connect(target) as conn:
                        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements SCHEMA public")
                yield cluster, target
        finally:
            if server_log:
                shutil.copyfile(cluster.logfile, server_log)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--agents", type=int, help="one pybatch run of this fleet (else --search)")
    parser.add_argument("--search", action="store_true", help="search the largest sustained fleet of each strategy")
    parser.add_argument("--strategies", default="pybatch,direct", help="for --search (default pybatch,direct)")
    parser.add_argument("--start", type=int, default=125_000, help="first size of pybatch's search")
    parser.add_argument("--direct-start", type=int, default=25_000, help="first size of direct's search")
    parser.add_argument("--max", type=int, default=1_600_000, help="largest size tried")
    parser.add_argument("--search-seconds", type=float, default=60, help="measured seconds of each search run")
    parser.add_argument("--minutes", type=float, default=0, help="a long pybatch run at the largest sustained size")
    parser.add_argument("--warmup", type=float, default=2 * PERIOD + 10, help="seconds before measuring")
    parser.add_argument("--limit", type=float, default=27.0, help="worst staleness allowed, s (timeout 30 s)")
    parser.add_argument("--shared-buffers", default="2GB", help="server shared_buffers (default 2GB)")
    parser.add_argument("--json", help="write every run as JSON")
    parser.add_argument("--server-log", help="copy the server's log here at the end (slow statements' plans)")
    parser.add_argument("--plot", help="PNG of staleness and flush time over the long run (needs matplotlib)")
    parser.add_argument(
        "--warm-start",
        action="store_true",
        help="every agent has connected once before a run, as in a table in use (default: never connected)",
    )
    parser.add_argument("--lanes", type=int, default=1, help="the scheduler's lanes (default 1)")
    parser.add_argument(
        "--statements",
        type=int,
        default=0,
        metavar="N",
        help="print the N statements that took the most server time in each pybatch run (pg_stat_statements)",
    )
    args = parser.parse_args(argv)
    report: dict[str, Any] = {
        "machine": {"cores": psutil.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1)},
        "settings": {
            "period_s": PERIOD,
            "limit_s": args.limit,
            "writers": WRITERS,
        },
        "runs": [],
    }
    with server(args.shared_buffers, args.server_log, args.statements > 0) as (cluster, dsn):
        with db.connect(dsn) as conn:
            report["server_version"] = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
            # As the server runs, not as asked: the figures hold for these settings.
            for name in ("shared_buffers", "fsync", "synchronous_commit", "full_page_writes", "max_wal_size"):
                report["settings"][name] = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()[0]  # type: ignore[index]
            interval = conn.execute("SELECT extract(epoch FROM flush_interval) FROM pybatch.settings").fetchone()
            report["settings"]["flush_interval_s"] = float(interval[0]) if interval else None
            report["settings"]["warm_start"] = args.warm_start
            report["settings"]["lanes"] = args.lanes
        print(f"scale: PostgreSQL {report['server_version']}, {report['settings']}", flush=True)
        long_size = args.agents
        if args.search:
            for strategy in args.strategies.split(","):
                if strategy == "pybatch":
                    attempt = lambda n: run_pybatch(  # noqa: E731
                        cluster,
                        dsn,
                        n,
                        args.warmup,
                        args.search_seconds,
                        args.limit,
                        args.warm_start,
                        args.statements,
                        args.lanes,
                    )
                else:
                    attempt = lambda n: run_direct(  # noqa: E731
                        cluster, dsn, n, args.warmup, args.search_seconds, args.warm_start
                    )
                first = args.start if strategy == "pybatch" else args.direct_start
                passed, failed, runs = search(strategy, attempt, first, args.max)
                report[strategy] = {"largest_sustained": passed, "first_not_sustained": failed}
                report["runs"] += [asdict(r) for r in runs]
                if strategy == "pybatch" and long_size is None:
                    long_size = passed
            if report.get("pybatch", {}).get("largest_sustained") and report.get("direct", {}).get("largest_sustained"):
                ratio = report["pybatch"]["largest_sustained"] / report["direct"]["largest_sustained"]
                print(f"fleet ratio pybatch/direct: {ratio:.1f}x", flush=True)
        if long_size and (args.minutes or not args.search):
            seconds = args.minutes * 60 if args.minutes else args.search_seconds
            run = run_pybatch(
                cluster, dsn, long_size, args.warmup, seconds, args.limit, args.warm_start, args.statements, args.lanes
            )
            show(run)
            report["long_run"] = asdict(run)
            if args.plot:
                plot(run, args.plot)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main(sys.argv[1:])
