"""The `pybatch` command: argument parsing and printing only; the work lives in the library.

Each command group is a module here with `register(subparsers)`. Errors end as one
line on stderr and a non-zero exit, never a traceback (unless --log-level debug).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from pybatch import __version__
from pybatch.cli import bench, core, grant, inspect, local, schedule
from pybatch.errors import ConfigError, PybatchError

EXIT_ERROR = 1
EXIT_USAGE = 2

COMMAND_MODULES = [core, local, schedule, inspect, grant, bench]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pybatch",
        description="PostgreSQL-side heartbeat batcher: stage heartbeats, flush them into workspace_agents.",
    )
    parser.add_argument("--version", action="version", version=f"pybatch {__version__}")
    parser.add_argument(
        "--dsn", default=None,
        help="libpq connection string or URI (env: PYBATCH_DSN; then PG* variables; else the embedded cluster)",
    )
    parser.add_argument(
        "--no-embedded", action="store_true",
        default=os.environ.get("PYBATCH_NO_EMBEDDED", "") not in ("", "0"),
        help="never fall back to the embedded local cluster (env: PYBATCH_NO_EMBEDDED=1)",
    )
    parser.add_argument(
        "--log-level", default=os.environ.get("PYBATCH_LOG_LEVEL", "warning"),
        choices=["debug", "info", "warning", "error"],
        help="log level (env: PYBATCH_LOG_LEVEL; default warning)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    psql_args = _split_psql_args(argv)
    args = parser.parse_args(argv)
    if psql_args is not None:
        args.psql_args = psql_args
    if args.log_level not in ("debug", "info", "warning", "error"):  # argparse does not check env defaults
        parser.error(f"PYBATCH_LOG_LEVEL: {args.log_level!r} is not one of debug, info, warning, error")
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.handler(args) or 0)
    except ConfigError as exc:
        print(f"pybatch: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PybatchError as exc:
        print(f"pybatch: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("pybatch: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: still one line, the traceback only in debug
        logging.getLogger("pybatch").debug("unexpected error", exc_info=True)
        first_line = (str(exc).strip().splitlines() or [""])[0]
        print(f"pybatch: unexpected error: {type(exc).__name__}: {first_line}", file=sys.stderr)
        return EXIT_ERROR


def _split_psql_args(argv: list[str]) -> list[str] | None:
    """`pybatch [options] psql ARGS...`: everything after `psql` belongs to psql, options
    included, so argparse never sees it. Cuts argv in place; None when the command is not psql."""
    takes_value = {"--dsn", "--log-level"}
    for index, word in enumerate(argv):
        if word == "psql" and (index == 0 or argv[index - 1] not in takes_value):
            rest = argv[index + 1:]
            del argv[index + 1:]
            return rest[1:] if rest[:1] == ["--"] else rest
        if not word.startswith("-") and (index == 0 or argv[index - 1] not in takes_value):
            return None  # another command came first
    return None


def entrypoint() -> None:
    sys.exit(main())
