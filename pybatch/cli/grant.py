"""`pybatch grant writer|reader|flusher ROLE`: least-privilege grants (see docs/permissions.md)."""

from __future__ import annotations

import argparse
from typing import Any

from pybatch import db
from pybatch.cli.commands import COMMANDS
from pybatch.cli.common import dsn
from pybatch.grants import Grant, grant

HELP = {
    Grant.WRITER: "let ROLE stage heartbeats (INSERT/COPY into pybatch.heartbeats) and call pybatch.disconnect()",
    Grant.READER: "let ROLE read every view in schema pybatch (nothing of workspace_agents beyond them)",
    Grant.FLUSHER: "let ROLE call pybatch.flush() (for a scheduler role)",
}


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("grant", help=COMMANDS["grant"].help)
    kinds = p.add_subparsers(dest="grant_kind", metavar="KIND", required=True)
    for kind in Grant:
        sub = kinds.add_parser(kind.value, help=HELP[kind])
        sub.add_argument("role", metavar="ROLE", help="an existing database role (quoted as an identifier)")
        sub.set_defaults(handler=cmd_grant, grant=kind)


def cmd_grant(args: argparse.Namespace) -> int:
    with db.connect(dsn(args)) as conn:
        db.require_primary(conn, "grant")
        done = grant(conn, args.grant, args.role)
    for statement in done:
        print(statement)
    return 0
