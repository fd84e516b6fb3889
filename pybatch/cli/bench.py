"""`pybatch bench` and `pybatch demo`: parsing and printing; the work is in pybatch.bench."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from pybatch import db, migrate
from pybatch.bench import STRATEGY_NAMES, BenchConfig, run_bench
from pybatch.bench import report as bench_report
from pybatch.bench.flush_rounds import FLUSH_MODES, check_modes
from pybatch.bench.target import TABLES
from pybatch.cli.commands import COMMANDS
from pybatch.cli.common import dsn, invoked_as, positive_int, print_table, resolve_cli_dsn
from pybatch.config import describe_dsn
from pybatch.durations import format_duration, parse_duration, parse_timedelta
from pybatch.errors import ConfigError, NotMigrated


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "bench",
        help=COMMANDS["bench"].help,
    )
    p.add_argument("--agents", type=positive_int, default=10_000, help="fleet size (default 10000)")
    p.add_argument("--period", default="15s", help="heartbeat period of each agent (default 15s)")
    p.add_argument(
        "--flush-interval",
        default="5s",
        help="flush interval for staged and buffered (default 5s, pybatch's own default)",
    )
    p.add_argument(
        "--seconds",
        default="60s",
        help="fleet time measured per strategy: a whole number of flush intervals, never rounded (default 60s)",
    )
    p.add_argument(
        "--warmup",
        default=None,
        help="fleet time run before measuring (default: 5 flush intervals, or one period plus one "
        "flush interval if longer): the window measures the steady state",
    )
    p.add_argument(
        "--compress",
        type=_compress,
        default=1.0,
        help="run N times faster: divides period, flush interval and the batching intervals by N "
        "(default 1: real time)",
    )
    p.add_argument(
        "--strategies",
        default=",".join(STRATEGY_NAMES),
        help=f"comma-separated, run in this order (default {','.join(STRATEGY_NAMES)})",
    )
    p.add_argument(
        "--table",
        default="coder",
        help=f"one of {', '.join(TABLES)}. coder (default): Coder's real workspace_agents (34 columns, "
        "~360-byte rows, 4 indexes, a trigger, 2 foreign keys, fillfactor 100), in a scratch database the "
        "bench creates and drops; minimal: this database's pybatch-created table",
    )
    p.add_argument(
        "--fillfactor",
        type=_fillfactor,
        default=None,
        help="set this fillfactor on workspace_agents first, e.g. 70 to compare (default: the table's "
        "own, 100 for Coder's)",
    )
    p.add_argument("--workers", type=positive_int, default=4, help="fleet threads sending heartbeats (default 4)")
    p.add_argument(
        "--flush-rounds",
        metavar="N",
        type=positive_int,
        default=None,
        help="instead of the strategies: stage one heartbeat for every agent and time one flush, "
        "N rounds in a row (round 1 is the worst case; the steady state follows round 5)",
    )
    p.add_argument(
        "--flush-modes",
        default=",".join(FLUSH_MODES),
        help="with --flush-rounds, comma-separated: passes (CALL pybatch.flush_in_passes(), the default "
        "path), single (SELECT pybatch.flush() in one transaction) (default: both)",
    )
    p.add_argument(
        "--client",
        action="store_true",
        help="instead of the strategies: measure HeartbeatClient itself (beat() overhead in both "
        "modes, heartbeats/s into staging from one process)",
    )
    p.add_argument(
        "--json",
        metavar="FILE",
        type=Path,
        default=None,
        help="write every figure as JSON (strategies.<name>.<figure>)",
    )
    p.add_argument(
        "--plot",
        metavar="FILE.png",
        type=Path,
        default=None,
        help="write a PNG bar chart (needs the `plot` extra: matplotlib)",
    )
    p.set_defaults(handler=cmd_bench)

    p = subparsers.add_parser(
        "demo",
        help=COMMANDS["demo"].help,
    )
    p.add_argument("--agents", type=positive_int, default=10_000, help="fleet size (default 10000)")
    p.add_argument(
        "--seconds",
        default="20s",
        help=f"time measured per strategy, whole flush intervals of "
        f"{format_duration(BenchConfig().flush_interval_s)} (default 20s)",
    )
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
        raise ConfigError(
            f"--seconds: {seconds_text!r} is not a whole number of flush intervals "
            f"({format_duration(flush)}): use {options}"
        )
    return window.total_seconds()


def _announce(config: BenchConfig) -> None:
    """Say what the run will cost before it starts: strategies x (warm-up + measured window)."""
    per_strategy = (config.warmup + config.window_s) / config.compress
    total = per_strategy * len(config.strategies)
    compressed = f" at {config.compress:g}x time compression" if config.compress != 1 else ""
    count = len(config.strategies)
    _say(
        f"this bench takes about {_clock(total)}: {count} {'strategy' if count == 1 else 'strategies'} x "
        f"({format_duration(config.warmup)} warm-up + {format_duration(config.window_s)} measured{compressed}), "
        f"plus a table reset before each"
    )


def _clock(seconds: float) -> str:
    whole = round(seconds)
    minutes, secs = divmod(whole, 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _require_migrated(target: str, *, table: str, client: bool) -> None:
    """The bench never migrates a database it was pointed at: where it runs in that database
    (--table minimal, --client, or a database that already holds Coder's table) the pybatch
    schema must be there. With --table coder elsewhere it migrates a scratch database of its own."""
    with db.connect(target) as conn:
        if not client and table != "minimal":
            from pybatch.bench.target import is_coder_table

            if not is_coder_table(conn):
                return  # a scratch database of the bench's own
        pending = migrate.pending_ids(conn)
    if pending:
        raise NotMigrated(
            f"{describe_dsn(target)} lacks pybatch migrations ({', '.join(pending)}): run "
            f"`{invoked_as()} migrate` first (the bench never migrates the database it is given)"
        )


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
        table=args.table,
    )
    modes = check_modes(tuple(m.strip() for m in args.flush_modes.split(",") if m.strip()))
    if args.plot is not None and args.plot.suffix.lower() != ".png":
        raise ConfigError(f"--plot: {str(args.plot)!r} must end in .png")
    target = dsn(args)
    _require_migrated(target, table=args.table, client=args.client)
    if args.flush_rounds is not None:
        return _flush_rounds(args, target, modes)
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
    if "direct" in report.strategies:
        print_table(bench_report.ratio_rows(report), title="per heartbeat, against one UPDATE per heartbeat (direct)")
    print_table(bench_report.size_rows(report), title="workspace_agents over the measured window")
    records = bench_report.wal_record_rows({n: f.get("wal_records_per_beat") for n, f in report.strategies.items()})
    if records:
        print_table(records, title="WAL bytes per heartbeat by record type (pg_walinspect; the whole server's WAL)")
    if args.json is not None:
        bench_report.write_json(report, args.json)
        print(f"JSON written to {args.json}")
    if args.plot is not None:
        bench_report.plot(report, args.plot)
        print(f"chart written to {args.plot}")
    return 0


def _flush_rounds(args: argparse.Namespace, target: str, modes: tuple[str, ...]) -> int:
    from pybatch.bench.flush_rounds import run_flush_rounds

    result = run_flush_rounds(
        target, args.agents, args.flush_rounds, fillfactor=args.fillfactor, table=args.table, modes=modes, progress=_say
    )
    for mode, figures in result["modes"].items():
        print_table(figures["rounds"], title=f"{FLUSH_MODES[mode]}: {args.agents} agents, round after round")
    print_table(
        bench_report.flush_rounds_rows(result),
        title=f"steady state: rounds {result['steady_after'] + 1} to {result['rounds']}, {args.agents} agents, "
        f"{result['table']} table at fillfactor {result['fillfactor']}",
    )
    records = bench_report.wal_record_rows({m: f.get("steady_wal_records_per_row") for m, f in result["modes"].items()})
    if records:
        print_table(records, title="steady state: WAL bytes per merged row by record type (pg_walinspect)")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"JSON written to {args.json}")
    return 0


def _warmup(text: str) -> float:
    return 0.0 if text.strip() in ("0", "0s") else parse_duration(text, name="--warmup")


def cmd_demo(args: argparse.Namespace) -> int:
    from pybatch.bench.demo import DEMO_STRATEGIES, check_demo_target, run_demo  # pulls in migrations

    # The demo flushes at the bench's default interval: --seconds must be whole intervals of it.
    seconds = _whole_flush_intervals(args.seconds, format_duration(BenchConfig().flush_interval_s))
    warmup = _warmup(args.warmup)
    # The demo sets everything up, the embedded cluster included, even after `local stop`.
    resolved = resolve_cli_dsn(args.dsn, embedded=not args.no_embedded, start_stopped=True)
    target = resolved.dsn
    # The embedded cluster's own database, the one plain `pybatch status` reads; any other must be
    # named for the demo. run_demo checks that before it changes anything.
    embedded = resolved.source == "embedded"
    _say(f"database: {resolved.source}")
    check_demo_target(target, embedded=embedded)  # a refusal comes before the estimate of a run that won't happen
    _announce(BenchConfig(agents=args.agents, seconds=seconds, warmup_s=warmup, strategies=DEMO_STRATEGIES))
    result = run_demo(target, agents=args.agents, seconds=seconds, warmup_s=warmup, progress=_say, embedded=embedded)
    report = result.report
    print()
    for line in bench_report.summary_lines(report):
        print(line)
    print(result.flush_by)
    print_table(bench_report.headline_rows(report, DEMO_STRATEGIES), title="direct UPDATEs vs pybatch buffered")
    direct, buffered = (report.strategies.get(name, {}) for name in DEMO_STRATEGIES)
    for label, key, unit in (
        ("statements/s", "statements_per_s", ""),
        ("server CPU per heartbeat", "cpu_us_per_beat", " µs"),
        ("WAL per heartbeat", "wal_bytes_per_beat", " B"),
    ):
        if direct.get(key) and buffered.get(key):
            print(comparison_line(label, float(direct[key]), float(buffered[key]), unit))
    print()
    print("The cluster is still running. Look inside:")
    prefix = f"--dsn {shlex.quote(target)} " if resolved.source == "--dsn" else ""
    if resolved.source not in ("embedded", "--dsn"):
        print(f"  (with the same {resolved.source} as this run)")
    me = invoked_as()
    print(f"  {me} {prefix}status")
    print(f"  {me} sql inspect | {me} {prefix}psql")
    return 0


def comparison_line(label: str, direct: float, buffered: float, unit: str = "") -> str:
    """One figure of the demo's summary, worded by which side is lower (lower is better for
    each figure shown): 'WAL per heartbeat: buffered 258 B vs direct 224 B, 1.15x direct (higher)'."""
    ratio = buffered / direct

    def factor(value: float) -> str:
        return f"{value:.2f}x" if value < 10 else f"{value:,.0f}x"

    if abs(ratio - 1) < 0.005:
        verdict = "the same as direct"
    elif ratio < 1:
        verdict = f"{factor(1 / ratio)} lower than direct" if ratio <= 0.5 else f"{factor(ratio)} direct (lower)"
    else:
        verdict = f"{factor(ratio)} direct (higher)"
    return f"{label}: buffered {buffered:,.4g}{unit} vs direct {direct:,.4g}{unit}: {verdict}"
