"""Helpers shared by the command modules: DSN resolution, JSON output, tables."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from typing import Any

from pybatch.config import ResolvedDsn, configured_dsn
from pybatch.errors import ConfigError


def dsn(args: argparse.Namespace) -> str:
    """The DSN for this run: --dsn, PYBATCH_DSN, PG*, else the embedded cluster."""
    return resolve_cli_dsn(args.dsn, embedded=not args.no_embedded).dsn


def resolve_cli_dsn(
    dsn: str | None, *, embedded: bool = True, environ: Mapping[str, str] | None = None
) -> ResolvedDsn:
    """--dsn, PYBATCH_DSN, PG* (as the library resolves them), else the embedded cluster,
    started if need be with a one-line notice on stderr. Only the CLI falls back to it."""
    env = os.environ if environ is None else environ
    found = configured_dsn(dsn, origin="--dsn", environ=env)
    if found is not None:
        return found
    if not embedded or env.get("PYBATCH_NO_EMBEDDED", "") not in ("", "0"):
        raise ConfigError(
            "no database configured: pass --dsn, set PYBATCH_DSN or PG* variables "
            "(the embedded cluster is turned off)"
        )
    from pybatch.local import LocalCluster  # imported late: only the fallback needs it

    return ResolvedDsn(LocalCluster.default().ensure_running(notice=True), "embedded")


def positive_int(text: str) -> int:
    """argparse type: a whole number above zero."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


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
