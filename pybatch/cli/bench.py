"""`pybatch bench` and `pybatch demo`: parsing and printing; the work is in pybatch.bench and pybatch.demo."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from pybatch import migrate
from pybatch.bench import STRATEGY_NAMES, BenchConfig, run_bench
from pybatch.bench import report as bench_report
from pybatch.cli.common import dsn, invoked_as, positive_int, print_table, resolve_cli_dsn
from pybatch.config import describe_dsn
from pybatch.durations import format_duration, parse_duration, parse_timedelta
from pybatch.errors import ConfigError, NotMigrated


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "bench",
        help="measure direct UPDATEs, app-side batching and pybatch side by side (resets workspace_agents: "
             "use a database of its own)",
    )
    p.add_argument("--agents", type=positive_int, default=10_000, help="fleet size (default 10000)")
    p.add_argument("--period", default="15s", help="heartbeat period of each agent (default 15s)")
    p.add_argument("--flush-interval", default="10s", help="flush interval for staged and buffered (default 10s)")
    p.add_argument("--seconds", default="60s",
                   help="fleet time measured per strategy: a whole number of flush intervals, never rounded "
                        "(default 60s)")
    p.add_argument("--warmup", default=None,
                   help="fleet time run before measuring (default: one period plus one flush interval)")
    p.add_argument("--compress", type=_compress, default=1.0,
                   help="run N times faster: divides period, flush interval and the batching intervals by N "
                        "(default 1: real time)")
    p.add_argument("--strategies", default=",".join(STRATEGY_NAMES),
                   help=f"comma-separated, run in this order (default {','.join(STRATEGY_NAMES)})")
    p.add_argument("--fillfactor", type=_fillfactor, default=None,
                   help="set this fillfactor on workspace_agents first (default: leave the table's own)")
    p.add_argument("--workers", type=positive_int, default=4, help="fleet threads sending heartbeats (default 4)")
    p.add_argument("--flush-rounds", metavar="N", type=positive_int, default=None,
                   help="instead of the strategies: stage one heartbeat for every agent and time one flush, "
                        "N rounds in a row (round 1 is the worst case, later rounds the steady state)")
    p.add_argument("--client", action="store_true",
                   help="instead of the strategies: measure HeartbeatClient itself (beat() overhead in both "
                        "modes, heartbeats/s into staging from one process)")
    p.add_argument("--json", metavar="FILE", type=Path, default=None,
                   help="write every figure as JSON (strategies.<name>.<figure>)")
    p.add_argument("--plot", metavar="FILE.png", type=Path, default=None,
                   help="write a PNG bar chart (needs the `plot` extra: matplotlib)")
    p.set_defaults(handler=cmd_bench)

    p = subparsers.add_parser(
        "demo",
        help="the showcase: embedded cluster, migrate, pg_cron flush job, direct vs buffered at 10,000 agents "
             "(about a minute); leaves the cluster running",
    )
    p.add_argument("--agents", type=positive_int, default=10_000, help="fleet size (default 10000)")
    p.add_argument("--seconds", default="20s", help="time measured per strategy (default 20s)")
    p.add_argument("--warmup", default="10s", help="time run before measuring, per strategy (default 10s)")
    p.set_defaults(handler=cmd_demo)


def _compress(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _fillfactor(text: str) -> int:
    value = positive_int(text)
    if not 10 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{text!r} must be between 10 and 100")
    return value


def _say(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def _whole_flush_intervals(seconds_text: str, flush_text: str) -> float:
    """--seconds, exactly: a whole number of flush intervals (the window runs from flush to flush)."""
    window = parse_timedelta(seconds_text, name="--seconds")
    flush = parse_timedelta(flush_text, name="--flush-interval")
    count, rest = divmod(window, flush)
    if rest:
        options = " or ".join(format_duration(n * flush) for n in (count, count + 1) if n > 0)
        raise ConfigError(f"--seconds: {seconds_text!r} is not a whole number of flush intervals "
                          f"({format_duration(flush)}): use {options}")
    return window.total_seconds()


def _announce(config: BenchConfig) -> None:
    """Say what the run will cost before it starts: strategies x (warm-up + measured window)."""
    per_strategy = (config.warmup + config.window_s) / config.compress
    total = per_strategy * len(config.strategies)
    compressed = f" at {config.compress:g}x time compression" if config.compress != 1 else ""
    count = len(config.strategies)
    _say(f"this bench takes about {_clock(total)}: {count} {'strategy' if count == 1 else 'strategies'} x "
         f"({format_duration(config.warmup)} warm-up + {format_duration(config.window_s)} measured{compressed}), "
         f"plus a table reset before each")


def _clock(seconds: float) -> str:
    whole = round(seconds)
    minutes, secs = divmod(whole, 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _require_migrated(target: str) -> None:
    """The bench needs the pybatch schema; it never migrates a database it was pointed at."""
    pending = migrate.pending_ids(target)
    if pending:
        raise NotMigrated(f"{describe_dsn(target)} lacks pybatch migrations ({', '.join(pending)}): run "
                          f"`{invoked_as()} migrate` first, on a database of the bench's own (it resets "
                          "workspace_agents)")


def cmd_bench(args: argparse.Namespace) -> int:
    strategies = tuple(name.strip() for name in args.strategies.split(",") if name.strip())
    config = BenchConfig(
        agents=args.agents,
        period_s=parse_duration(args.period, name="--period"),
        flush_interval_s=parse_duration(args.flush_interval, name="--flush-interval"),
        seconds=_whole_flush_intervals(args.seconds, args.flush_interval),
        warmup_s=None if args.warmup is None else _warmup(args.warmup),
        compress=args.compress,
        strategies=strategies,
        fillfactor=args.fillfactor,
        workers=args.workers,
    )
    if args.plot is not None and args.plot.suffix.lower() != ".png":
        raise ConfigError(f"--plot: {str(args.plot)!r} must end in .png")
    target = dsn(args)
    _require_migrated(target)
    if args.flush_rounds is not None:
        return _flush_rounds(args, target)
    if args.client:
        from pybatch.bench.client_overhead import measure

        figures = measure(target, agents=args.agents, progress=_say)
        print_table(figures.rows(), title=f"HeartbeatClient, {args.agents} agents, one process")
        return 0
    _announce(config)
    report = run_bench(target, config, progress=_say)
    for line in bench_report.summary_lines(report):
        print(line)
    print_table(bench_report.table_rows(report))
    if args.json is not None:
        bench_report.write_json(report, args.json)
        print(f"JSON written to {args.json}")
    if args.plot is not None:
        bench_report.plot(report, args.plot)
        print(f"chart written to {args.plot}")
    return 0


def _flush_rounds(args: argparse.Namespace, target: str) -> int:
    from pybatch.bench.flush_rounds import run_flush_rounds

    result = run_flush_rounds(target, args.agents, args.flush_rounds, fillfactor=args.fillfactor, progress=_say)
    print_table(result["rounds"], title=f"flush of {args.agents} agents, round after round")
    print(f"first round {result['first_round_ms']:g} ms; steady state (round 3 on): median "
          f"{result['steady_median_ms']:g} ms, max {result['steady_max_ms']:g} ms, HOT {result['steady_hot_share']:g}, "
          f"{result['steady_wal_bytes_per_row']:g} WAL bytes per row")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"JSON written to {args.json}")
    return 0


def _warmup(text: str) -> float:
    return 0.0 if text.strip() in ("0", "0s") else parse_duration(text, name="--warmup")


def cmd_demo(args: argparse.Namespace) -> int:
    from pybatch.demo import DEMO_STRATEGIES, run_demo  # the demo pulls in the cluster and migrations

    resolved = resolve_cli_dsn(args.dsn, embedded=not args.no_embedded)
    target = resolved.dsn
    # The embedded cluster's own database, the one plain `pybatch status` reads; any other must be
    # named for the demo. run_demo checks that before it changes anything.
    embedded = resolved.source == "embedded"
    _say(f"database: {resolved.source}")
    result = run_demo(target, agents=args.agents, seconds=parse_duration(args.seconds, name="--seconds"),
                      warmup_s=_warmup(args.warmup), progress=_say, embedded=embedded)
    report = result.report
    print()
    for line in bench_report.summary_lines(report):
        print(line)
    print(result.flush_by)
    print_table(bench_report.headline_rows(report, DEMO_STRATEGIES), title="direct UPDATEs vs pybatch buffered")
    direct, buffered = (report.strategies.get(name, {}) for name in DEMO_STRATEGIES)
    for label, key in (("statements/s", "statements_per_s"), ("server CPU per heartbeat", "cpu_us_per_beat"),
                       ("WAL per heartbeat", "wal_bytes_per_beat")):
        if direct.get(key) and buffered.get(key):
            print(f"{label}: buffered is {direct[key] / buffered[key]:.1f}x lower than direct")
    print()
    print("The cluster is still running. Look inside:")
    prefix = f"--dsn {shlex.quote(target)} " if resolved.source == "--dsn" else ""
    if resolved.source not in ("embedded", "--dsn"):
        print(f"  (with the same {resolved.source} as this run)")
    me = invoked_as()
    print(f"  {me} {prefix}status")
    print(f"  {me} sql inspect | {me} {prefix}psql")
    return 0
