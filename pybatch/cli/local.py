"""`pybatch local start|stop|status|url`: the embedded cluster."""

from __future__ import annotations

import argparse
from typing import Any

from pybatch.local import LocalCluster


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "local",
        help="manage the embedded local cluster (directory: env PYBATCH_HOME)",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, handler, text in (
        ("start", cmd_start, "initialise if needed and start the cluster"),
        ("stop", cmd_stop, "stop the cluster"),
        ("status", cmd_status, "say whether it runs, where and on which port (exit 3 when stopped)"),
        ("url", cmd_url, "print the connection URL of its pybatch database"),
    ):
        sub = actions.add_parser(name, help=text)
        sub.set_defaults(handler=handler)


def cmd_start(args: argparse.Namespace) -> int:
    cluster = LocalCluster.default()
    url = cluster.ensure_running()
    print(url)
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    LocalCluster.default().stop()
    print("stopped")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    cluster = LocalCluster.default()
    if not cluster.is_initialised():
        print(f"not initialised ({cluster.home})")
        return 3
    if not cluster.is_running():
        print(f"stopped ({cluster.home}, port {cluster.port})")
        return 3
    print(f"running ({cluster.home}, port {cluster.port}) {cluster.url()}")
    return 0


def cmd_url(args: argparse.Namespace) -> int:
    print(LocalCluster.default().url())
    return 0
