"""`pybatch grant writer|reader|flusher ROLE` as a subprocess."""

from __future__ import annotations

import psycopg
import pytest

from tests.conftest import run_pybatch
from tests.integration.roles import login_role


@pytest.mark.parametrize(
    ("kind", "check"),
    [
        (
            "writer",
            "SELECT has_table_privilege(%s, 'pybatch.heartbeats', 'INSERT') "
            "AND NOT has_table_privilege(%s, 'public.workspace_agents', 'SELECT')",
        ),
        (
            "flusher",
            "SELECT has_function_privilege(%s, 'pybatch.flush(bigint, interval)', 'EXECUTE') "
            "AND NOT has_table_privilege(%s, 'pybatch.heartbeats', 'INSERT')",
        ),
        (
            "reader",
            "SELECT has_table_privilege(%s, 'pybatch.health', 'SELECT') "
            "AND NOT has_table_privilege(%s, 'pybatch.flush_log', 'SELECT')",
        ),
    ],
)
def test_grant_prints_what_it_ran(dsn: str, conn: psycopg.Connection, kind: str, check: str) -> None:
    with login_role(conn, kind) as role:
        result = run_pybatch("--dsn", dsn, "grant", kind, role)
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        lines = result.stdout.splitlines()
        assert lines and all(line.startswith("GRANT ") and f'"{role}"' in line for line in lines)
        assert conn.execute(check, (role, role)).fetchone() == (True,)


def test_grant_unknown_role_is_one_line(dsn: str) -> None:
    result = run_pybatch("--dsn", dsn, "grant", "reader", "nobody_here")
    assert result.returncode == 1
    assert result.stderr.strip() == ("pybatch: error: role 'nobody_here' does not exist; create it first (CREATE ROLE)")
