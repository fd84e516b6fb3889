"""One failover (kill -9 of the primary, then promote) or switchover (clean stop, then promote)
under load, measured: used by tests/integration/test_failover.py and benchmarks/failover.py.

Buffered clients (two "app replicas") beat for every agent on a multi-host DSN
(`host=127.0.0.1,127.0.0.1 port=p1,p2 target_session_attrs=read-write`); `pybatch scheduler`
flushes on the same DSN. Just before the failure each client's buffer is written
(flush_buffer()), so every beat given before it is acknowledged: committed to staging on the
primary. Then the primary dies and the standby is promoted.

Half the agents go quiet at the failure (their last beat is the acknowledged one), so a lost beat
cannot hide behind a later one: at the end each quiet agent's last_connected_at must be at or
after its last acknowledged beat. The other half keep beating: on the new primary the run samples,
every 200 ms, how many of them are past the inactive timeout (shown "disconnected" though they
beat), and notes the first flush.

The times keep Coder's shape, scaled: a heartbeat period much longer than the failover, and an
inactive timeout of two periods, so one lost beat is enough to push its agent past the timeout
(8 + 8 + 0.2 + 1 s > 16 s, as 15 + 15 + 1 + 5 s > 30 s).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from pybatch import HeartbeatClient
from pybatch.local import LocalCluster
from pybatch.schedule import cron
from tests.ha_fixtures import kill_postmaster, multi_host_dsn, pg_ctl, promote, replay_caught_up, wait_until


@dataclass(frozen=True)
class Timing:
    """Scaled-down fleet timings (pybatch.settings ranges allow them)."""

    heartbeat: float = 8.0
    write_interval: float = 0.2
    flush_interval: float = 1.0
    inactive_timeout: float = 16.0
    warmup: float = 60.0  # at most this long for every agent's beats to be merged before the failure
    after: float = 14.0  # beating after the promotion: more than a heartbeat period


@dataclass(frozen=True)
class FailoverFigures:
    kind: str
    flusher: str
    agents: int
    acknowledged_beats_lost: int  # quiet agents whose final last_connected_at is before their last acknowledged beat
    quiet_agents: int  # agents that stopped beating at the failure
    rows_rewritten: int  # beats the clients wrote again after reconnecting
    agents_over_timeout_max: int  # most agents past inactive_timeout in one sample on the new primary
    worst_staleness_s: float  # largest now() - last_connected_at sampled on the new primary
    outage_s: float  # failure to promotion done
    first_flush_after_promotion_s: float | None  # promotion done to the first successful flush there
    inactive_timeout_s: float
    heartbeat_s: float
    flush_interval_s: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Scheduler:
    def __init__(self, dsn: str, interval: float) -> None:
        self.log = Path(tempfile.mkstemp(prefix="pybatch-failover-scheduler-", suffix=".log")[1])
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYBATCH_", "PG"))}
        argv = [sys.executable, "-m", "pybatch", "--dsn", dsn, "--log-level", "info", "scheduler"]
        argv += ["--interval", f"{int(interval * 1000)}ms"]
        with self.log.open("w") as err:
            self.proc = subprocess.Popen(
                argv,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
            )

    def text(self) -> str:
        return self.log.read_text()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.unlink(missing_ok=True)


class _Fleet:
    """Agents beating every `heartbeat` seconds, spread evenly, through two buffered clients."""

    def __init__(self, dsn: str, agents: list[uuid.UUID], timing: Timing) -> None:
        self.agents = agents
        self.timing = timing
        options: dict[str, Any] = {
            "mode": "buffered",
            "write_interval": timing.write_interval,
            "max_backoff": "1s",
            "connect_timeout": "2s",
        }
        self.clients = [HeartbeatClient(dsn, **options), HeartbeatClient(dsn, **options)]
        self.given: dict[uuid.UUID, datetime] = {}
        self.quiet: set[uuid.UUID] = set()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="fleet")

    def _run(self) -> None:
        n = len(self.agents)
        period = self.timing.heartbeat
        started = time.monotonic()
        next_due = [started + period * i / n for i in range(n)]
        while not self.stop.is_set():
            now = time.monotonic()
            for i, agent in enumerate(self.agents):
                if next_due[i] <= now:
                    with self.lock:
                        if agent in self.quiet:
                            continue
                        at = datetime.now(UTC)
                        self.clients[i % 2].beat(agent, at=at)
                        self.given[agent] = at
                    next_due[i] += period
            self.stop.wait(0.02)

    def acknowledge(self, quiet: set[uuid.UUID]) -> dict[uuid.UUID, datetime]:
        """Silence the `quiet` agents; return every beat given so far, committed to staging when
        this returns."""
        with self.lock:
            self.quiet = set(quiet)
            snapshot = dict(self.given)
        for client in self.clients:
            client.flush_buffer()
        return snapshot

    def close(self) -> int:
        self.stop.set()
        self.thread.join()
        rewritten = 0
        for client in self.clients:
            client.close()
            rewritten += client.stats.rows_rewritten
        return rewritten


def configure(dsn: str, timing: Timing) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE pybatch.settings SET heartbeat_period = make_interval(secs => %s), "
            "client_write_interval = make_interval(secs => %s), flush_interval = make_interval(secs => %s), "
            "inactive_timeout = make_interval(secs => %s)",
            (timing.heartbeat, timing.write_interval, timing.flush_interval, timing.inactive_timeout),
        )


def _sample(conn: psycopg.Connection, agents: list[uuid.UUID], timeout: float) -> tuple[int, float]:
    row = conn.execute(
        "SELECT count(*) FILTER (WHERE now() - last_connected_at > make_interval(secs => %s)), "
        "coalesce(extract(epoch FROM max(now() - last_connected_at))::float8, 0) "
        "FROM public.workspace_agents WHERE id = ANY(%s)",
        (timeout, agents),
    ).fetchone()
    assert row is not None
    return int(row[0]), float(row[1])


def _steady(conn: psycopg.Connection, agents: list[uuid.UUID], timing: Timing) -> bool:
    row = conn.execute(
        "SELECT count(*) FILTER (WHERE last_connected_at IS NULL), "
        "(SELECT count(*) FROM pybatch.flush_log WHERE error IS NULL AND agents_updated > 0) "
        "FROM public.workspace_agents WHERE id = ANY(%s)",
        (agents,),
    ).fetchone()
    assert row is not None
    return row[0] == 0 and row[1] >= 3 and _sample(conn, agents, timing.inactive_timeout)[0] == 0


def run_failover(
    primary: LocalCluster,
    standby: LocalCluster,
    *,
    kind: str = "failover",
    agents: int = 200,
    timing: Timing | None = None,
    flusher: str = "scheduler",
    after_promotion: Callable[[LocalCluster], None] | None = None,
) -> FailoverFigures:
    """Run one failover ("failover": kill -9 of the primary's postmaster; "switchover": a clean
    fast stop) under load and return what it cost. `flusher`: "scheduler" (`pybatch scheduler`
    on the multi-host DSN) or "pg_cron" (a job installed on the primary, replicated).
    `after_promotion` runs on the new primary right after the promotion (a failover manager's hook)."""
    timing = timing or Timing()
    dbname = "pybatch"
    dsn = multi_host_dsn([primary, standby], dbname)
    configure(primary.url(), timing)
    with psycopg.connect(primary.url(), autocommit=True) as conn:
        ids = [uuid.uuid4() for _ in range(agents)]
        conn.execute("INSERT INTO public.workspace_agents (id) SELECT unnest(%s::uuid[])", (ids,))
    replay_caught_up(primary, standby)
    scheduler = _Scheduler(dsn, timing.flush_interval) if flusher == "scheduler" else None
    if flusher == "pg_cron":  # a job on the primary, replicated to the standby with everything else
        with psycopg.connect(primary.url(), autocommit=True) as conn:
            cron.install(conn, timing.flush_interval)
    fleet = _Fleet(dsn, ids, timing)
    fleet.thread.start()
    try:
        with psycopg.connect(primary.url(), autocommit=True) as conn:
            # Steady state: every agent's beats merged, none past the timeout, a few flushes done.
            wait_until(
                lambda: _steady(conn, ids, timing),
                timing.warmup,
                "every agent merged and within the timeout on the primary",
            )
        # The quiet agents are exactly the first client's (agent i beats through client i % 2): that
        # client then has nothing new to write, and must still notice the failover by itself.
        quiet = set(ids[::2])
        beating = [a for a in ids if a not in quiet]
        acknowledged = fleet.acknowledge(quiet)
        failed_at = time.monotonic()
        if kind == "failover":
            kill_postmaster(primary)
        else:
            pg_ctl(primary, "stop", "-m", "fast", "-w", "-t", "60")
        promote(standby)
        outage = time.monotonic() - failed_at
        if after_promotion is not None:
            after_promotion(standby)
        over_max, worst = 0, 0.0
        with psycopg.connect(standby.url(), autocommit=True) as conn:
            promoted_at = conn.execute("SELECT now()").fetchone()
            assert promoted_at is not None
            first_flush: float | None = None
            deadline = time.monotonic() + timing.after
            while time.monotonic() < deadline:
                over, stalest = _sample(conn, beating, timing.inactive_timeout)
                over_max, worst = max(over_max, over), max(worst, stalest)
                if first_flush is None:
                    row = conn.execute(
                        "SELECT extract(epoch FROM min(started_at + duration) - %s)::float8 FROM pybatch.flush_log "
                        "WHERE started_at >= %s AND error IS NULL",
                        (promoted_at[0], promoted_at[0]),
                    ).fetchone()
                    first_flush = row[0] if row and row[0] is not None else None
                time.sleep(0.2)
    finally:
        rewritten = fleet.close()
        if scheduler is not None:
            if os.environ.get("FAILOVER_DEBUG"):  # the scheduler's log, to see what it did
                print(scheduler.text())
            scheduler.close()
    with psycopg.connect(standby.url(), autocommit=True) as conn:
        # Whatever is still staged is merged by one more flush (the flusher may be gone by now).
        conn.execute("CALL pybatch.flush_in_passes(NULL, make_interval(secs => 5), NULL)")
        final: dict[uuid.UUID, datetime | None] = {
            agent: at
            for agent, at in conn.execute(
                "SELECT id, last_connected_at FROM public.workspace_agents WHERE id = ANY(%s)", (ids,)
            )
        }
    lost = 0
    for agent, acked_at in acknowledged.items():
        if agent not in quiet:
            continue  # its later beats cover it
        merged_at = final[agent]
        if merged_at is None or merged_at < acked_at:
            lost += 1
            if os.environ.get("FAILOVER_DEBUG"):
                print(f"lost: agent {agent} acknowledged at {acked_at}, merged {merged_at}")
    return FailoverFigures(
        kind=kind,
        flusher=flusher,
        agents=agents,
        acknowledged_beats_lost=lost,
        quiet_agents=len(quiet),
        rows_rewritten=rewritten,
        agents_over_timeout_max=over_max,
        worst_staleness_s=round(worst, 2),
        outage_s=round(outage, 2),
        first_flush_after_promotion_s=None if first_flush is None else round(first_flush, 2),
        inactive_timeout_s=timing.inactive_timeout,
        heartbeat_s=timing.heartbeat,
        flush_interval_s=timing.flush_interval,
    )
