"""Test set-up: one real PostgreSQL cluster with pg_cron, started here (never outside),
and a fresh database per test cloned by pytest-postgresql from a migrated template."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from pytest_postgresql.janitor import DatabaseJanitor

from pybatch import migrate
from pybatch.local import SUPERUSER, LocalCluster, temporary_cluster
from tests.helpers import connected

TEMPLATE_DB = "pybatch_template"
# Faster, not less correct: crash tests kill processes, not the machine.
TEST_SETTINGS = {"fsync": "off", "full_page_writes": "off", "max_connections": "300"}


def _dsn(cluster: LocalCluster, dbname: str) -> str:
    return cluster.conninfo(dbname)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[LocalCluster]:
    """The session's own cluster, in a temporary directory the server user can reach."""
    with temporary_cluster(TEST_SETTINGS, prefix="pybatch-tests-") as cluster:
        template = DatabaseJanitor(user=SUPERUSER, host="127.0.0.1", port=cluster.port, dbname=TEMPLATE_DB)
        template.init()
        connected(_dsn(cluster, TEMPLATE_DB), migrate.apply)
        yield cluster


def _fresh_database(cluster: LocalCluster, template: str | None) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:16]}"
    janitor = DatabaseJanitor(
        user=SUPERUSER,
        host="127.0.0.1",
        port=cluster.port,
        dbname=name,
        template_dbname=template,
    )
    janitor.init()
    try:
        yield _dsn(cluster, name)
    finally:
        janitor.drop()


@pytest.fixture
def dsn(pg_cluster: LocalCluster) -> Iterator[str]:
    """A fresh, migrated database for this test."""
    yield from _fresh_database(pg_cluster, TEMPLATE_DB)


@pytest.fixture
def empty_dsn(pg_cluster: LocalCluster) -> Iterator[str]:
    """A fresh database with nothing installed."""
    yield from _fresh_database(pg_cluster, None)


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(dsn, autocommit=True) as connection:
        yield connection


@pytest.fixture
def empty_conn(empty_dsn: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to `empty_dsn` (nothing installed)."""
    with psycopg.connect(empty_dsn, autocommit=True) as connection:
        yield connection


@pytest.fixture
def own_cluster() -> Iterator[LocalCluster]:
    """A private cluster (pg_cron preloaded) with a migrated `pybatch` database, for tests
    that stop, kill or restart the server. Slower than `dsn`: use only when needed.
    Its app database DSN is `own_cluster.url()`."""
    with temporary_cluster(TEST_SETTINGS, prefix="pybatch-own-") as cluster:
        connected(cluster.url(), migrate.apply)
        yield cluster


def run_pybatch(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a subprocess (`python -m pybatch ...`) with a clean configuration:
    no PYBATCH_* or PG* variables leak in unless given in `env`."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PYBATCH_", "PG"))}
    base.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "pybatch", *args],
        env=base,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        check=False,
    )
