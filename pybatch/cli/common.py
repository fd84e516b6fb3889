"""Helpers shared by the command modules: DSN resolution, argument types, JSON output, tables."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pybatch.config import ResolvedDsn, configured_dsn
from pybatch.durations import parse_timedelta
from pybatch.errors import ConfigError, InvalidDuration

# Options that read no environment variable: one-shot actions and output choices of a single
# run (a `--json` or `--yes` in the environment would surprise). Every other option's help
# names its variable as `env: NAME`; tests/acceptance/test_core_cli.py checks both.
NO_ENV = frozenset(
    {
        "--help",
        "--version",
        "--json",
        "--yes",
        "--force",
        "--all",
        "--status",
        "--rollback",
        "--force-loop",
        "--citus",
        "--flushes",
        "--max-rows",
        "--agents",
        "--period",
        "--flush-interval",
        "--seconds",
        "--warmup",
        "--compress",
        "--strategies",
        "--fillfactor",
        "--workers",
        "--flush-rounds",
        "--client",
        "--plot",
        "--table",
        "--flush-modes",
    }
)


def dsn(args: argparse.Namespace) -> str:
    """The DSN for this run: --dsn, PYBATCH_DSN, PG*, else the embedded cluster."""
    return resolved_dsn(args).dsn


def resolved_dsn(args: argparse.Namespace) -> ResolvedDsn:
    """The DSN for this run and where it came from."""
    return resolve_cli_dsn(args.dsn, embedded=not args.no_embedded)


def resolve_cli_dsn(
    dsn: str | None,
    *,
    embedded: bool = True,
    environ: Mapping[str, str] | None = None,
    start_stopped: bool = False,
) -> ResolvedDsn:
    """--dsn, PYBATCH_DSN, PG* (as the library resolves them), else the embedded cluster, with
    a one-line notice on stderr. Only the CLI falls back to it. The first use creates and starts
    it; once it exists and is stopped (`pybatch local stop`), it stays stopped: commands refuse,
    naming `pybatch local start`, unless start_stopped (the demo, which sets everything up)."""
    env = os.environ if environ is None else environ
    found = configured_dsn(dsn, origin="--dsn", environ=env)
    if found is not None:
        return found
    if not embedded or env.get("PYBATCH_NO_EMBEDDED", "") not in ("", "0"):
        raise ConfigError(
            "no database configured: pass --dsn, set PYBATCH_DSN or PG* variables (the embedded cluster is turned off)"
        )
    from pybatch.errors import LocalClusterError
    from pybatch.local import LocalCluster  # imported late: only the fallback needs it

    cluster = LocalCluster.default()
    if not start_stopped and cluster.is_initialised() and not cluster.is_running():
        raise LocalClusterError(
            f"the embedded cluster is stopped: `{invoked_as()} local start` (its directory: {cluster.home})"
        )
    return ResolvedDsn(cluster.ensure_running(notice=True), "embedded")


def whole_number(text: str, low: int, high: int) -> int:
    """A whole number written in ASCII digits (no sign, `_`, Unicode digits or exponent), low..high.
    Raises argparse.ArgumentTypeError without the option's name: argparse adds it."""
    stripped = text.strip()
    if stripped.startswith("-") and stripped[1:].isascii() and stripped[1:].isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} must be positive" if low > 0 else f"{text!r} must be {low} or more")
    if not (stripped.isascii() and stripped.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (ASCII digits only)")
    value = int(stripped)
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"{text!r} is out of range ({low} to {high})")
    return value


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    """argparse type: a whole number from low to high."""

    def convert(text: str) -> int:
        return whole_number(text, low, high)

    convert.__name__ = "whole number"
    return convert


def lanes_count(text: str) -> int:
    """argparse type of --lanes: 1 to MAX_LANES sessions."""
    from pybatch.flush import MAX_LANES  # imported here: it brings psycopg

    return whole_number(text, 1, MAX_LANES)


LANES_HELP = (
    "merge each flush on this many sessions at once, 1-64: for fleets whose flush keeps one core busy, "
    "on a server with a core to spare per lane (env: PYBATCH_LANES; default: 1)"
)


def flag_or_env(value: Any, name: str, convert: Callable[[str], Any]) -> Any:
    """The flag's value, else the environment variable's (an error names the variable)."""
    if value is not None or not os.environ.get(name):
        return value
    try:
        return convert(os.environ[name])
    except argparse.ArgumentTypeError as exc:
        raise ConfigError(f"{name}: {exc}") from None


# Large enough for any sensible count (agents, rounds, workers), small enough for PostgreSQL's integer.
positive_int = bounded_int(1, 2**31 - 1)


def duration_seconds(text: str) -> float:
    """argparse type: a duration (500ms, 10s, 1m, 2h, 7d or seconds) in seconds, above zero."""
    try:
        return parse_timedelta(text, name="").total_seconds()
    except InvalidDuration as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def invoked_as() -> str:
    """How the user ran pybatch, for hints they can paste: `pybatch` when that is what the
    shell finds, else the path they typed (e.g. `.venv/bin/pybatch`), or `python -m pybatch`."""
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else "pybatch"
    path = Path(argv0)
    if path.name in ("__main__.py", "-m", "-c"):
        python = Path(sys.executable)
        found_python = shutil.which(python.name)
        on_path = found_python is not None and os.path.samefile(found_python, python)
        return f"{python.name if on_path else python} -m pybatch"
    found = shutil.which(path.name)
    if found and path.exists() and os.path.samefile(found, path):
        return path.name
    return argv0


def print_json(document: Any) -> None:
    json.dump(document, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def print_table(rows: list[dict[str, Any]], title: str | None = None) -> None:
    """A plain aligned table (rich when stdout is a terminal)."""
    if not rows:
        print(f"{title}: (none)" if title else "(none)")
        return
    columns = list(rows[0])
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(*(_cell(row[c]) for c in columns))
        Console().print(table)
        return
    widths = {c: max(len(c), *(len(_cell(r[c])) for r in rows)) for c in columns}
    if title:
        print(title)
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(_cell(row[c]).ljust(widths[c]) for c in columns))


def _cell(value: Any) -> str:
    return "" if value is None else str(value)
