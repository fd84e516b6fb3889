"""`pybatch completion bash|zsh`: print a shell completion script for pybatch (shtab, from the
same argparse parser the command uses, so it always matches this version's commands and flags).

Activate it once per shell, e.g. in ~/.bashrc: `eval "$(pybatch completion bash)"`; for zsh, in
~/.zshrc after compinit: `eval "$(pybatch completion zsh)"`. The script is static: pressing tab
runs no Python."""

from __future__ import annotations

import argparse
from typing import Any

from pybatch.cli.commands import COMMANDS
from pybatch.errors import PybatchError

SHELLS = ("bash", "zsh")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("completion", help=COMMANDS["completion"].help)
    p.add_argument("shell", choices=SHELLS, help="the shell to complete in")
    p.set_defaults(handler=cmd_completion)


def cmd_completion(args: argparse.Namespace) -> int:
    try:
        import shtab
    except ImportError:
        raise PybatchError("shell completion needs shtab: pip install 'pybatch-pg[cli]'") from None
    from pybatch.cli import build_parser  # the whole parser: every command and flag

    print(shtab.complete(build_parser(), shell=args.shell))
    return 0
