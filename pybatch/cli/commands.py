"""Every command: its name, the module that registers it, and its one-line help.

`pybatch --help` and parsing one command need only this table and that command's module, so
starting the CLI imports nothing heavy (psycopg, yoyo, rich, psutil, prometheus_client, the bench):
tests/unit/test_cli_imports.py checks it."""

from __future__ import annotations

from typing import NamedTuple


class Command(NamedTuple):
    module: str  # pybatch.cli.<module> registers it
    help: str


COMMANDS: dict[str, Command] = {
    "migrate": Command(
        "core",
        "install or upgrade the pybatch schema (yoyo migrations)",
    ),
    "flush": Command(
        "core",
        "run one flush now and print its statistics",
    ),
    "psql": Command(
        "core",
        "open psql on the configured database (pybatch's global options may follow `psql`; every other "
        "argument, and all after `--`, goes to psql)",
    ),
    "uninstall": Command(
        "core",
        "remove pybatch's pg_cron job, schema and migration tables (a workspace_agents it did not create stays)",
    ),
    "local": Command(
        "local",
        "manage the embedded local cluster (directory: env PYBATCH_HOME), or with --citus a local Citus cluster",
    ),
    "cron": Command(
        "schedule",
        "schedule the flush with pg_cron (install, remove, status)",
    ),
    "scheduler": Command(
        "schedule",
        "run the flush every interval in this process (leader-elected); logs its start and each change "
        "of leadership even at the default log level (--log-level error silences them)",
    ),
    "status": Command(
        "status",
        "health, staging, recent flushes and agents by status (exit 0 only when health is ok)",
    ),
    "doctor": Command(
        "status",
        "check the installation, one line per check (exit 1 if any fails)",
    ),
    "sql": Command(
        "status",
        "print SQL: the pending migrations (the default), or the inspection queries for psql",
    ),
    "config": Command(
        "config",
        "show or change the settings stored in pybatch.settings",
    ),
    "grant": Command(
        "grant",
        "grant an existing role exactly what a pybatch job needs",
    ),
    "bench": Command(
        "bench",
        "measure direct UPDATEs, app-side batching and pybatch side by side (resets workspace_agents: "
        "use a database of its own)",
    ),
    "demo": Command(
        "bench",
        "the showcase: embedded cluster, migrate, pg_cron flush job, direct vs buffered at 10,000 agents"
        " (about a minute); leaves the cluster running",
    ),
    "completion": Command(
        "completion",
        'print a bash or zsh completion script: eval "$(pybatch completion bash)" in ~/.bashrc '
        "(zsh: in ~/.zshrc, after compinit)",
    ),
}
