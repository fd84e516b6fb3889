"""`pybatch demo`: the showcase. Start the embedded cluster (when no database is
configured), migrate, install the pg_cron flush job, run a short bench of `direct`
against `buffered`, and leave the cluster running to look inside.

The demo resets public.workspace_agents, so before it changes anything it checks that the
database is meant for it: the embedded cluster's own database, or one the user named for the
demo (its name contains "demo"), and that workspace_agents holds nothing but bench agents.
A refusal leaves the database exactly as it was: no migration, no pg_cron job."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pybatch import db, migrate
from pybatch.bench.fleet import BENCH_ID_SPAN
from pybatch.bench.fleet_run import BenchConfig, BenchReport, Progress, run_bench
from pybatch.errors import PybatchError
from pybatch.schedule import cron

log = logging.getLogger(__name__)

DEMO_STRATEGIES = ("direct", "buffered")
DEMO_MARK = "demo"  # a database the user names for the demo has this in its name


class DemoRefused(PybatchError):
    """The database is not one the demo may change; nothing was changed."""


@dataclass(frozen=True)
class DemoResult:
    report: BenchReport
    flush_by: str  # what flushed staging during the demo, and why


def install_cron_flush(dsn: str, interval_s: float) -> tuple[bool, str]:
    """Install the pg_cron flush job. Returns (installed, what to tell the user)."""
    try:
        with db.connect(dsn) as conn:
            cron.install(conn, interval_s)
    except Exception as exc:  # any failure falls back: the demo must still run
        return False, f"pg_cron job not installed ({db.first_line(exc)}); the bench's own flush thread flushes"
    return True, f"the pg_cron job flushes every {interval_s:g}s"


def check_demo_target(dsn: str, *, embedded: bool) -> str:
    """Refuse, before any change, a database the demo must not touch. Only reads.
    Returns the database's name."""
    with db.connect(dsn) as conn:
        row = conn.execute(
            "SELECT pg_catalog.current_database(), pg_catalog.to_regclass('public.workspace_agents') IS NOT NULL"
        ).fetchone()
        assert row is not None
        name, has_agents_table = str(row[0]), bool(row[1])
        if not embedded and DEMO_MARK not in name.lower():
            raise DemoRefused(
                f"the demo resets public.workspace_agents and installs a pg_cron job, so it runs only in the "
                f"embedded cluster or in a database named for it (with {DEMO_MARK!r} in its name); database "
                f"{name!r} is neither, and nothing was changed: run it with no --dsn, PYBATCH_DSN or PG* "
                f"variables, or point it at a database such as pybatch_demo"
            )
        if has_agents_table:
            lo, hi = BENCH_ID_SPAN
            with db.translated(f"cannot inspect public.workspace_agents in {name!r}"):
                others = conn.execute(
                    "SELECT count(*) FROM public.workspace_agents WHERE id NOT BETWEEN %s AND %s",
                    (lo, hi),
                ).fetchone()
            if others and others[0]:
                raise DemoRefused(
                    f"public.workspace_agents in database {name!r} holds {others[0]} rows that are not the "
                    f"demo's agents, and the demo resets that table: nothing was changed; run the demo against "
                    f"a database of its own"
                )
    return name


def run_demo(
    dsn: str,
    *,
    agents: int = 10_000,
    seconds: float = 20.0,
    warmup_s: float = 10.0,
    progress: Progress | None = None,
    embedded: bool = False,
) -> DemoResult:
    """Run the demo in `dsn`. `embedded`: the database is the embedded cluster's own, so its
    name need not say "demo" (its workspace_agents is still checked)."""
    say = progress or (lambda message: None)
    check_demo_target(dsn, embedded=embedded)
    with db.connect(dsn) as conn:
        applied = migrate.apply(conn)
    steps = [*applied.migrations, *(["routines"] if applied.routines else [])]
    say(f"schema: applied {', '.join(steps)}" if steps else "schema: up to date")
    config = BenchConfig(agents=agents, seconds=seconds, warmup_s=warmup_s, strategies=DEMO_STRATEGIES)
    installed, flush_by = install_cron_flush(dsn, config.flush_interval_s)
    say(flush_by)
    if installed:
        config = BenchConfig(
            agents=agents, seconds=seconds, warmup_s=warmup_s, strategies=DEMO_STRATEGIES, external_flush=True
        )
    report = run_bench(dsn, config, progress=say)
    return DemoResult(report, flush_by)
