"""The CLI starts fast: `import pybatch.cli`, `pybatch --help` and parsing one command import
no heavy module; each command imports what it uses when it runs (issue 22, fast start).

Asserted on the modules `python -X importtime` reports, not on timings (a loaded machine
would make a timing flaky)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Heavy for a start: each costs tens of milliseconds, and most commands need none of them.
HEAVY = ("psycopg", "psycopg_pool", "yoyo", "rich", "psutil", "prometheus_client", "matplotlib", "pybatch.bench")


def imported(*argv: str) -> set[str]:
    """Every module the Python command imports (top-level and submodules), from -X importtime."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYBATCH_", "PG"))}
    result = subprocess.run(
        [sys.executable, "-X", "importtime", *argv], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    lines = [line for line in result.stderr.splitlines() if line.startswith("import time:")]
    assert lines, result.stderr
    return {line.rsplit("|", 1)[1].strip() for line in lines[1:]}  # the first line is the header


def heavy(modules: set[str], allowed: tuple[str, ...] = ()) -> list[str]:
    return sorted(m for m in modules for h in HEAVY if h not in allowed and (m == h or m.startswith(h + ".")))


def test_importing_the_cli_imports_nothing_heavy() -> None:
    assert heavy(imported("-c", "import pybatch.cli")) == []


def test_importing_pybatch_loads_the_clients_on_first_use() -> None:
    assert heavy(imported("-c", "import pybatch, pybatch.errors")) == []
    check = "import pybatch; from pybatch import HeartbeatClient, AsyncHeartbeatClient; print(HeartbeatClient.__name__)"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "HeartbeatClient"


@pytest.mark.parametrize(
    ("argv", "allowed"),
    [
        (["--help"], ()),
        (["--bogus"], ()),
        (["local", "status", "--help"], ()),
        (["status", "--help"], ("psycopg",)),  # status connects: psycopg, nothing else heavy
        (["cron", "status", "--help"], ("psycopg",)),
        (["config", "show", "--help"], ("psycopg",)),
    ],
)
def test_parsing_a_command_imports_only_what_it_needs(argv: list[str], allowed: tuple[str, ...]) -> None:
    assert heavy(imported("-m", "pybatch", *argv), allowed) == []
