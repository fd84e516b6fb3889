"""The `pybatch` command: argument parsing and printing only; the work lives in the library.

Each command group is a module here with `register(subparsers)`. Errors end as one
line on stderr and a non-zero exit, never a traceback (unless --log-level debug).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Collection, Sequence
from typing import Any

from pybatch import __version__
from pybatch.cli.commands import COMMANDS
from pybatch.errors import ConfigError, PybatchError

EXIT_ERROR = 1
EXIT_USAGE = 2
# Killed by SIGPIPE, as a shell reports it (128 + 13): what `cat` gives when its reader leaves.
EXIT_BROKEN_PIPE = 141

# The modules that register commands (pybatch/cli/<module>.py), in the order of COMMANDS.
COMMAND_MODULES = list(dict.fromkeys(command.module for command in COMMANDS.values()))


LOG_LEVELS = ("debug", "info", "warning", "error")


def build_parser(modules: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The whole parser, or with `modules` only those command modules' full parsers: every other
    command is there by name and help alone, so parsing one command imports only its module."""
    parser = argparse.ArgumentParser(
        prog="pybatch",
        description="PostgreSQL-side heartbeat batcher: stage heartbeats, flush them into workspace_agents.",
        epilog="Global options work before or after the command (pybatch migrate --dsn URL). "
        "Options whose help says `env: NAME` read that environment variable when not given; "
        "the others have none.",
    )
    parser.add_argument("--version", action="version", version=f"pybatch {__version__}")
    add_global_options(parser, top=True)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    wanted = set(COMMAND_MODULES if modules is None else modules)
    registered: set[str] = set()
    for name, command in COMMANDS.items():
        if command.module not in wanted:
            subparsers.add_parser(name, help=command.help)  # a stand-in: listed by --help, never run
        elif command.module not in registered:
            importlib.import_module(f"pybatch.cli.{command.module}").register(subparsers)
            registered.add(command.module)
    for sub in _subparsers(parser):
        add_global_options(sub.add_argument_group("global options"), top=False)
    return parser


def add_global_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, top: bool) -> None:
    """--dsn, --no-embedded and --log-level. On the top parser they carry the defaults (from the
    environment); on each command they default to SUPPRESS, so a value typed after the command
    overrides the top's and an absent one leaves it alone."""

    def default(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    parser.add_argument(
        "--dsn",
        default=default(None),
        help="libpq connection string or URI (env: PYBATCH_DSN; then PG* variables; else the embedded cluster)",
    )
    parser.add_argument(
        "--no-embedded",
        action="store_true",
        default=default(os.environ.get("PYBATCH_NO_EMBEDDED", "") not in ("", "0")),
        help="never fall back to the embedded local cluster (env: PYBATCH_NO_EMBEDDED=1)",
    )
    parser.add_argument(
        "--log-level",
        default=default(os.environ.get("PYBATCH_LOG_LEVEL", "warning")),
        choices=LOG_LEVELS,
        help="log level (env: PYBATCH_LOG_LEVEL; default warning)",
    )


def _command_actions(parser: argparse.ArgumentParser) -> list[argparse._SubParsersAction]:  # type: ignore[type-arg]
    """The COMMAND and ACTION choices of parser and of every parser below it."""
    found = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    for child in _subparsers(parser):
        found.extend(action for action in child._actions if isinstance(action, argparse._SubParsersAction))
    return found


def _refuse_unknown_options(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Name an unknown option (`pybatch --bogus`, `pybatch -V`) before argparse's "the following
    arguments are required: COMMAND", which it says first when the command is missing too."""
    actions = {action: action.required for action in _command_actions(parser)}
    for action in actions:
        action.required = False
    try:
        _, unknown = parser.parse_known_args(argv)
    finally:
        for action, required in actions.items():
            action.required = required
    if unknown:
        hint = "; the version is `pybatch --version`" if "-V" in unknown else ""
        parser.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every command and sub-command parser below parser, each once."""
    found: list[argparse.ArgumentParser] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                found.append(child)
                found.extend(_subparsers(child))
    return found


class LogFormatter(logging.Formatter):
    """Timestamped lines for info and debug (and for everything with short_warnings=False);
    warnings and errors as `pybatch: warning: message`, like the CLI's one-line errors."""

    def __init__(self, *, short_warnings: bool) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.short_warnings = short_warnings

    def format(self, record: logging.LogRecord) -> str:
        if self.short_warnings and record.levelno >= logging.WARNING:
            return f"pybatch: {record.levelname.lower()}: {record.getMessage()}"
        return super().format(record)


def _command_word(argv: Sequence[str]) -> str | None:
    """The command named in argv (the first word that is not an option or an option's value)."""
    for index, word in enumerate(argv):
        if word == "--":
            return None
        if word.startswith("-") or (index > 0 and argv[index - 1] in _GLOBAL_TAKES_VALUE):
            continue
        return word
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = COMMANDS.get(_command_word(argv) or "")
    parser = build_parser(modules=[command.module] if command else [])
    psql_args = _split_psql_args(argv)
    _refuse_unknown_options(parser, argv)
    args = parser.parse_args(argv)
    if psql_args is not None:
        args.psql_args = psql_args
    if args.log_level not in LOG_LEVELS:  # argparse does not check env defaults
        parser.error(f"PYBATCH_LOG_LEVEL: {args.log_level!r} is not one of {', '.join(LOG_LEVELS)}")
    setup_logging = getattr(args, "setup_logging", None)
    handler = logging.StreamHandler(sys.stderr)
    # A one-shot command's warnings read like its errors (`pybatch: warning: ...`); a long-running
    # command (the scheduler) keeps timestamps on every line.
    handler.setFormatter(LogFormatter(short_warnings=setup_logging is None))
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), handlers=[handler])
    if setup_logging is not None:  # a command that logs more than the global level (the scheduler)
        setup_logging(args)
    try:
        code = int(args.handler(args) or 0)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return code
    except BrokenPipeError:
        # The reader stopped early (`pybatch sql --all | head -5`): what it read is what it wanted.
        # Point stdout at /dev/null so the interpreter's last flush finds no pipe to break.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
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


# pybatch's own options, recognised among `pybatch psql` arguments too (psql has none of these names).
_GLOBAL_TAKES_VALUE = ("--dsn", "--log-level")
_GLOBAL_FLAGS = ("--no-embedded",)
# psql options whose value is the next word (so `-c --dsn` stays psql's SQL text).
_PSQL_SHORT_WITH_VALUE = set("cdfvLoFPRThpU")
_PSQL_LONG_WITH_VALUE = {
    "--command",
    "--dbname",
    "--file",
    "--set",
    "--variable",
    "--log-file",
    "--output",
    "--field-separator",
    "--pset",
    "--record-separator",
    "--table-attr",
    "--host",
    "--port",
    "--username",
}


def _split_psql_args(argv: list[str]) -> list[str] | None:
    """`pybatch [options] psql ARGS...`: the words after `psql` belong to psql, options included,
    except pybatch's global options (--dsn, --no-embedded, --log-level), which move before `psql`
    so argparse reads them. Everything after a `--` goes to psql untouched. Edits argv in place;
    returns psql's words, or None when the command is not psql."""
    for index, word in enumerate(argv):
        after_value_option = index > 0 and argv[index - 1] in _GLOBAL_TAKES_VALUE
        if word == "psql" and not after_value_option:
            ours, theirs = _pick_global_options(argv[index + 1 :])
            argv[index:] = [*ours, "psql"]
            return theirs
        if not word.startswith("-") and not after_value_option:
            return None  # another command came first
    return None


def _pick_global_options(words: list[str]) -> tuple[list[str], list[str]]:
    ours: list[str] = []
    theirs: list[str] = []
    index = 0
    while index < len(words):
        word = words[index]
        if word == "--":
            theirs.extend(words[index + 1 :])
            break
        name = word.split("=", 1)[0]
        if word in _GLOBAL_FLAGS or (name in _GLOBAL_TAKES_VALUE and "=" in word):
            ours.append(word)
        elif word in _GLOBAL_TAKES_VALUE:
            ours.extend(words[index : index + 2])
            index += 1
        else:
            theirs.append(word)
            if _psql_value_follows(word) and index + 1 < len(words):
                theirs.append(words[index + 1])
                index += 1
        index += 1
    return ours, theirs


def _psql_value_follows(word: str) -> bool:
    """Whether psql reads the next word as this option's value (`-c`, `-Atc`, `--command`)."""
    if word.startswith("--"):
        return word in _PSQL_LONG_WITH_VALUE
    if word.startswith("-") and len(word) > 1:
        for position, letter in enumerate(word[1:], start=1):
            if letter in _PSQL_SHORT_WITH_VALUE:
                return position == len(word) - 1  # `-cSELECT` carries its value
    return False


def entrypoint() -> None:
    sys.exit(main())
