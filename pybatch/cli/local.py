"""`pybatch local start|stop|status|url [--citus]`: the embedded cluster, or a local Citus cluster
(a coordinator and 2 workers as 3 embedded clusters under one directory)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pybatch.cli.commands import COMMANDS
from pybatch.errors import LocalClusterError
from pybatch.local import LocalCluster

CITUS_HELP = (
    "the local Citus cluster instead: a coordinator and 2 workers on this machine, in the directory "
    "`citus` beside the embedded cluster's (PYBATCH_HOME's parent); URLs name the coordinator"
)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "local",
        help=COMMANDS["local"].help,
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, handler, text in (
        ("start", cmd_start, "initialise if needed and start the cluster; print its URL"),
        ("stop", cmd_stop, "stop the cluster"),
        ("status", cmd_status, "say whether it runs, where and on which port (exit 3 when stopped)"),
        ("url", cmd_url, "print the connection URL of its pybatch database"),
    ):
        sub = actions.add_parser(name, help=text)
        sub.add_argument("--citus", action="store_true", help=CITUS_HELP)
        sub.set_defaults(handler=handler)


def cmd_start(args: argparse.Namespace) -> int:
    if args.citus:
        from pybatch.local_citus import CitusCluster  # imported late: only --citus needs it

        citus = CitusCluster.default()
        citus.start()
        print(citus.url())
        hint = citus.layout_hint()
        print(f"pybatch: {citus.describe()}" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return 0
    cluster = LocalCluster.default()
    url = cluster.ensure_running()
    print(url)
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    if args.citus:
        from pybatch.local_citus import CitusCluster

        CitusCluster.default().stop()
        print("stopped")
        return 0
    cluster = LocalCluster.default()
    if not cluster.is_initialised():
        print(f"not initialised ({cluster.home}): nothing to stop")
        return 0
    was_running = cluster.stop()
    if cluster.port_in_use():
        raise LocalClusterError(
            f"the embedded cluster in {cluster.home} is stopped, but something still listens on its port "
            f"{cluster.port} (an orphan server?): `ss -ltnp 'sport = :{cluster.port}'` names the process"
        )
    if was_running:
        print(
            f"stopped ({cluster.home}, port {cluster.port}); "
            "commands will not start it again until `pybatch local start`"
        )
    else:
        print(f"not running ({cluster.home}, port {cluster.port}): nothing to stop")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    if args.citus:
        return _citus_status()
    cluster = LocalCluster.default()
    if not cluster.is_initialised():
        print(f"not initialised ({cluster.home})")
        return 3
    if not cluster.is_running():
        orphan = "; something else listens on that port (an orphan server?)" if cluster.port_in_use() else ""
        print(f"stopped ({cluster.home}, port {cluster.port}){orphan}")
        return 3
    print(f"running ({cluster.home}, port {cluster.port}) {cluster.url()}")
    return 0


def _citus_status() -> int:
    from pybatch.local_citus import CitusCluster

    citus = CitusCluster.default()
    if not citus.is_initialised():
        print(f"not initialised ({citus.home})")
        return 3
    nodes = [("coordinator", citus.coordinator)] + [(f"worker {n}", w) for n, w in enumerate(citus.workers, 1)]
    states = [(name, node.is_running(), node.port) for name, node in nodes]
    summary = ", ".join(f"{name} :{port} {'running' if up else 'stopped'}" for name, up, port in states)
    if all(up for _, up, _ in states):
        print(f"running ({citus.home}: {summary}) {citus.url()}")
        return 0
    print(f"stopped ({citus.home}: {summary})")
    return 3


def cmd_url(args: argparse.Namespace) -> int:
    if args.citus:
        from pybatch.local_citus import CitusCluster

        print(CitusCluster.default().url())
        return 0
    print(LocalCluster.default().url())
    return 0
