"""`pybatch demo`: the showcase. Start the embedded cluster (when no database is
configured), migrate, install the pg_cron flush job, run a short bench of `direct`
against `buffered`, and leave the cluster running to look inside."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pybatch import db, migrate
from pybatch.bench.runner import BenchConfig, BenchReport, Progress, run_bench

log = logging.getLogger(__name__)

DEMO_STRATEGIES = ("direct", "buffered")


@dataclass(frozen=True)
class DemoResult:
    report: BenchReport
    flush_by: str  # what flushed staging during the demo, and why


def install_cron_flush(dsn: str, interval_s: float) -> tuple[bool, str]:
    """Install the pg_cron flush job if this build has pybatch.schedule.cron.
    Returns (installed, what to tell the user)."""
    try:
        from pybatch.schedule import cron  # another module; absent in a build without scheduling
    except ImportError:
        return False, "pg_cron scheduling is not available in this build; the bench's own flush thread flushes"
    try:
        cron.install(dsn, interval_s)
    except Exception as exc:  # any failure falls back: the demo must still run
        return False, f"pg_cron job not installed ({db.first_line(exc)}); the bench's own flush thread flushes"
    return True, f"the pg_cron job flushes every {interval_s:g}s"


def run_demo(dsn: str, *, agents: int = 10_000, seconds: float = 20.0, warmup_s: float = 10.0,
             progress: Progress | None = None) -> DemoResult:
    say = progress or (lambda message: None)
    applied = migrate.apply(dsn, progress=lambda mid: say(f"applying migration {mid}"))
    say(f"schema: applied {', '.join(applied)}" if applied else "schema: up to date")
    config = BenchConfig(agents=agents, seconds=seconds, warmup_s=warmup_s, strategies=DEMO_STRATEGIES)
    installed, flush_by = install_cron_flush(dsn, config.flush_interval_s)
    say(flush_by)
    if installed:
        config = BenchConfig(agents=agents, seconds=seconds, warmup_s=warmup_s, strategies=DEMO_STRATEGIES,
                             external_flush=True)
    report = run_bench(dsn, config, progress=say)
    return DemoResult(report, flush_by)
