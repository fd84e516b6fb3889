"""A failover under load, measured: beats lost, agents over the inactive timeout, and the seconds
from the promotion to the first flush on the new primary, for each flusher.

    .venv/bin/python benchmarks/failover.py [--agents 2000] [--kinds failover,switchover]
        [--flushers scheduler,pg_cron16,pg_cron14] [--heartbeat 15s] [--timeout 30s] [--flush 5s]
        [--write 1s] [--json]

Each run starts a primary and a streaming standby on loopback (tests/ha_fixtures.py), N agents
beating every heartbeat through two buffered clients on a multi-host DSN, and the flusher; then
kill -9 of the primary ("failover") or a clean fast stop ("switchover"), and `pg_ctl promote` of
the standby (tests/failover_run.py says what is measured and how). Flushers:

- scheduler: `pybatch scheduler` on the multi-host DSN;
- pg_cron16: pg_cron 1.6 (built by `make test` into /var/tmp/pg-cron16) with
  cron.use_background_workers = on: the replicated 'N seconds' job runs on the promoted node as is;
- pg_cron14: Debian 12's pg_cron 1.4, its per-minute flush_loop job; the job names the old node
  (libpq mode), so `pybatch cron install` runs on the new primary right after the promotion, as a
  failover manager's post-promotion hook would. The gap until the next minute's run remains.

Defaults are Coder's: 15 s heartbeats, a 30 s inactive timeout, a 1 s client write interval and
a 5 s flush.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pybatch import migrate  # noqa: E402
from pybatch.durations import parse_duration  # noqa: E402
from pybatch.local import LocalCluster, find_bindir, temporary_cluster  # noqa: E402
from pybatch.schedule import cron  # noqa: E402
from tests.failover_run import FailoverFigures, Timing, run_failover  # noqa: E402
from tests.ha_fixtures import standby_of  # noqa: E402
from tests.helpers import connected  # noqa: E402

CRON16_HOME = Path(os.environ.get("PYBATCH_CRON16_HOME", "/var/tmp/pg-cron16"))
# Faster, not less correct for this measurement: nothing here survives a machine crash.
SETTINGS = {"fsync": "off", "full_page_writes": "off", "max_connections": "300"}


def _repair_job(node: LocalCluster) -> None:
    connected(node.url(), lambda conn: cron.install(conn, cron.stored_interval(conn)))


def one(kind: str, flusher: str, agents: int, timing: Timing) -> FailoverFigures:
    settings = dict(SETTINGS)
    after_promotion = None
    if flusher == "pg_cron16":
        os.environ["PYBATCH_PG_BINDIR"] = str(CRON16_HOME / str(find_bindir()).lstrip("/"))
        settings.update({"cron.use_background_workers": "on", "max_worker_processes": "32"})
    else:
        os.environ.pop("PYBATCH_PG_BINDIR", None)
    if flusher == "pg_cron14":
        after_promotion = _repair_job
    with temporary_cluster(settings, prefix="pybatch-failover-bench-") as primary:
        connected(primary.url(), migrate.apply)
        with standby_of(primary) as standby:
            figures = run_failover(
                primary,
                standby,
                kind=kind,
                agents=agents,
                timing=timing,
                flusher="scheduler" if flusher == "scheduler" else "pg_cron",
                after_promotion=after_promotion,
            )
            if flusher != "scheduler":
                connected(standby.url(), cron.remove)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--agents", type=int, default=2000)
    parser.add_argument("--kinds", default="failover")
    parser.add_argument("--flushers", default="scheduler,pg_cron16,pg_cron14")
    parser.add_argument("--heartbeat", default="15s")
    parser.add_argument("--timeout", default="30s")
    parser.add_argument("--flush", default="5s")
    parser.add_argument("--write", default="1s")
    parser.add_argument("--json", action="store_true", help="one JSON object per run instead of a table")
    args = parser.parse_args()
    heartbeat = parse_duration(args.heartbeat, name="--heartbeat")
    flush = parse_duration(args.flush, name="--flush")
    results = []
    for flusher in args.flushers.split(","):
        # After the promotion: a heartbeat period and more, or the next minute for pg_cron 1.4's loop.
        after = 75.0 if flusher == "pg_cron14" else heartbeat + 3 * flush + 5
        timing = Timing(
            heartbeat=heartbeat,
            write_interval=parse_duration(args.write, name="--write"),
            flush_interval=flush,
            inactive_timeout=parse_duration(args.timeout, name="--timeout"),
            warmup=heartbeat * 4 + 60,
            after=after,
        )
        for kind in args.kinds.split(","):
            figures = one(kind, flusher, args.agents, timing)
            data = {"flusher_variant": flusher, **figures.as_dict()}
            results.append(data)
            if args.json:
                print(json.dumps(data), flush=True)
            else:
                print(
                    f"{kind:<10} {flusher:<10} agents {figures.agents}: acknowledged beats lost "
                    f"{figures.acknowledged_beats_lost} of {figures.quiet_agents} quiet agents; agents over the "
                    f"{figures.inactive_timeout_s:g}s timeout (most at once) {figures.agents_over_timeout_max}; "
                    f"worst staleness {figures.worst_staleness_s}s; outage {figures.outage_s}s; first flush "
                    f"{figures.first_flush_after_promotion_s}s after promotion; beats written again "
                    f"{figures.rows_rewritten}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
