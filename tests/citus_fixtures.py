"""Citus test set-up: a coordinator and 2 workers (pybatch/local_citus.py), started once per
session, and a fresh migrated database per test cloned from a template on every node.

Citus is built with scripts/build_citus.sh when it is missing and we are root (CI is); the
Citus tests are skipped only when it truly cannot be built here (not root and not installed),
and never under CI=true, where a missing Citus fails the run instead.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from pybatch import migrate
from pybatch.local_citus import CitusCluster, CitusUnavailable, temporary_citus_cluster

CITUS_TEMPLATE = "pybatch_citus_template"
# Triggers on distributed tables (tests inject failures with them) need this.
CITUS_TEST_SETTINGS = {"fsync": "off", "full_page_writes": "off", "citus.enable_unsafe_triggers": "on"}

AGENTS_DDL = """
    CREATE TABLE public.workspace_agents (
        id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        first_connected_at timestamptz,
        last_connected_at timestamptz,
        disconnected_at timestamptz,
        last_connected_replica_id uuid,
        connection_timeout_seconds integer NOT NULL DEFAULT 0
    )
"""


def prepare_distributed(cluster: CitusCluster, dbname: str) -> str:
    """A workspace_agents distributed by id, then `pybatch migrate`: the layout a Citus user has."""
    cluster.ensure_database(dbname)
    url = cluster.url(dbname)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(AGENTS_DDL)
        conn.execute("SELECT create_distributed_table('public.workspace_agents', 'id')")
        migrate.apply(conn)
    return url


def _freeze_template(conninfo: str) -> None:
    """No session may be in a template when it is cloned: Citus's maintenance daemon and its
    cached connections would be. Forbid new connections and end the existing ones."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(sql.Identifier(CITUS_TEMPLATE)))
        for _ in range(100):
            row = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s", (CITUS_TEMPLATE,)
            ).fetchone()
            if row == (0,):
                return
            time.sleep(0.1)
        raise RuntimeError(f"sessions stay in {CITUS_TEMPLATE}")


@pytest.fixture(scope="session")
def citus_cluster() -> Iterator[CitusCluster]:
    try:
        with temporary_citus_cluster(CITUS_TEST_SETTINGS) as cluster:
            prepare_distributed(cluster, CITUS_TEMPLATE)
            for node in cluster.nodes:
                _freeze_template(node.conninfo("postgres"))
            yield cluster
    except CitusUnavailable as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"Citus cannot be built here: {exc}")


@pytest.fixture
def citus_dsn(citus_cluster: CitusCluster) -> Iterator[str]:
    """A fresh database cloned from the migrated template on every node (same name everywhere,
    so the coordinator's metadata points at the clone on each worker)."""
    name = f"c_{uuid.uuid4().hex[:16]}"
    for node in citus_cluster.nodes:
        with psycopg.connect(node.conninfo("postgres"), autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(CITUS_TEMPLATE))
            )
    try:
        yield citus_cluster.coordinator.conninfo(name)
    finally:
        citus_cluster.drop_database(name)


def staged(conn: psycopg.Connection) -> tuple[int, int]:
    """(rows in staging, rows in pending): what a flush has not merged yet."""
    row = conn.execute(
        "SELECT (SELECT count(*) FROM pybatch.heartbeats), (SELECT count(*) FROM pybatch.pending)"
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])
