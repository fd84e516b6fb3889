"""Remove pybatch from a database: its pg_cron job first, then sql/uninstall.sql.

public.workspace_agents is dropped only when pybatch created it
(pybatch.settings.created_workspace_agents); a table that was there before stays.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass

import psycopg

from pybatch import db, resources

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UninstallResult:
    jobs_removed: int
    schema_existed: bool
    dropped_workspace_agents: bool


def uninstall(dsn: str) -> UninstallResult:
    """Remove pybatch's jobs, schema and migration tables from the database at `dsn`."""
    jobs = _remove_jobs(dsn)
    with db.connect(dsn) as conn, db.translated("uninstall failed (nothing was removed)"), conn.transaction():
        created = conn.execute(
            "SELECT (SELECT created_workspace_agents FROM pybatch.settings) "
            "FROM pg_catalog.pg_namespace WHERE nspname = 'pybatch'"
        ).fetchone() if _schema_exists(conn) else None
        conn.execute(resources.read_sql("uninstall.sql"))
    result = UninstallResult(jobs, created is not None, bool(created and created[0]))
    log.info("uninstalled pybatch", extra={"jobs_removed": result.jobs_removed,
                                           "schema_existed": result.schema_existed,
                                           "dropped_workspace_agents": result.dropped_workspace_agents})
    return result


def _schema_exists(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT to_regclass('pybatch.settings') IS NOT NULL").fetchone()
    return bool(row and row[0])


def _remove_jobs(dsn: str) -> int:
    """Remove this database's pg_cron jobs first: left behind, they would call dropped functions."""
    try:
        # Imported late: pg_cron support is optional in a build.
        cron = importlib.import_module("pybatch.schedule.cron")
    except ImportError:
        log.warning("pybatch.schedule.cron is not available: no pg_cron job removed")
        return 0
    return int(cron.remove(dsn))
