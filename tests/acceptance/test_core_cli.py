"""The core CLI as a subprocess: happy paths and one-line errors for bad input."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pybatch import __version__
from tests.conftest import run_pybatch


def assert_one_line_error(result, *fragments: str, code: int | None = None) -> None:  # type: ignore[no-untyped-def]
    assert result.returncode != 0, result
    if code is not None:
        assert result.returncode == code, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("applying")]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_version() -> None:
    result = run_pybatch("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"pybatch {__version__}"


def test_help_names_every_env_var() -> None:
    result = run_pybatch("--help")
    assert "PYBATCH_DSN" in result.stdout and "PYBATCH_NO_EMBEDDED" in result.stdout
    assert "PYBATCH_LOG_LEVEL" in result.stdout


def test_migrate_flush_status_rollback(empty_dsn: str) -> None:
    result = run_pybatch("--dsn", empty_dsn, "migrate")
    assert result.returncode == 0, result.stderr
    assert "0001_initial" in result.stdout
    assert run_pybatch("--dsn", empty_dsn, "migrate").stdout.strip() == "schema is up to date"
    status = run_pybatch("--dsn", empty_dsn, "migrate", "--status")
    assert "applied  0001_initial" in status.stdout
    flushed = run_pybatch("--dsn", empty_dsn, "flush", "--json")
    assert flushed.returncode == 0 and '"rows_staged": 0' in flushed.stdout
    env_flush = run_pybatch("flush", env={"PYBATCH_DSN": empty_dsn})
    assert env_flush.returncode == 0 and "rows_staged=0" in env_flush.stdout


def test_flush_failure_exits_non_zero_and_keeps_staging(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO public.workspace_agents (id) VALUES ('00000000-0000-0000-0000-000000000001')")
        conn.execute("INSERT INTO pybatch.heartbeats (agent_id) VALUES ('00000000-0000-0000-0000-000000000001')")
        conn.execute("""CREATE FUNCTION public.boom() RETURNS trigger LANGUAGE plpgsql AS $$
                        BEGIN RAISE EXCEPTION 'boom'; END $$;
                        CREATE TRIGGER boom BEFORE UPDATE ON public.workspace_agents
                        FOR EACH ROW EXECUTE FUNCTION public.boom()""")
        result = run_pybatch("--dsn", dsn, "flush")
        assert_one_line_error(result, "flush failed and kept staging", "boom", code=1)
        assert conn.execute("SELECT count(*) FROM pybatch.heartbeats").fetchone() == (1,)


def test_unreachable_dsn() -> None:
    result = run_pybatch("--dsn", "host=127.0.0.1 port=1 dbname=x connect_timeout=3", "flush")
    assert_one_line_error(result, "cannot connect to 127.0.0.1:1/x", code=1)


@pytest.mark.parametrize("dsn", ["host='unterminated", "this is not a dsn"])
def test_malformed_dsn(dsn: str) -> None:
    assert_one_line_error(run_pybatch("--dsn", dsn, "flush"), "--dsn is not a valid connection string", code=2)
    assert_one_line_error(run_pybatch("flush", env={"PYBATCH_DSN": dsn}), "PYBATCH_DSN is not a valid", code=2)


def test_password_never_printed() -> None:
    result = run_pybatch("--dsn", "postgresql://u:topsecret@127.0.0.1:1/db?connect_timeout=3", "flush")
    assert result.returncode == 1 and "topsecret" not in result.stderr + result.stdout


def test_database_without_privileges(empty_dsn: str) -> None:
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS pybatch_nopriv")
        conn.execute("CREATE ROLE pybatch_nopriv LOGIN")
    try:
        params = psycopg.conninfo.conninfo_to_dict(empty_dsn)
        params["user"] = "pybatch_nopriv"
        weak = psycopg.conninfo.make_conninfo(**params)  # type: ignore[arg-type]
        assert_one_line_error(run_pybatch("--dsn", weak, "migrate"), "permission denied", code=1)
    finally:
        with psycopg.connect(empty_dsn, autocommit=True) as conn:
            conn.execute("DROP OWNED BY pybatch_nopriv")
            conn.execute("DROP ROLE pybatch_nopriv")


def test_missing_column_names_it(empty_dsn: str) -> None:
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.workspace_agents (id uuid PRIMARY KEY, created_at timestamptz NOT NULL)")
    assert_one_line_error(run_pybatch("--dsn", empty_dsn, "migrate"), 'missing column "updated_at"', code=1)


def test_flush_before_migrate(empty_dsn: str) -> None:
    assert_one_line_error(run_pybatch("--dsn", empty_dsn, "flush"), "run `pybatch migrate`", code=1)


def test_bad_flag_value_is_usage_error(dsn: str) -> None:
    result = run_pybatch("--dsn", dsn, "flush", "--max-rows", "-3")
    assert result.returncode == 2 and "must be positive" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture
def local_home() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="pybatch-home-"))
    os.chmod(base, 0o755)
    try:
        yield base / "cluster"
    finally:
        run_pybatch("local", "stop", env={"PYBATCH_HOME": str(base / "cluster")})
        shutil.rmtree(base, ignore_errors=True)


def test_embedded_cluster_lifecycle(local_home: Path) -> None:
    env = {"PYBATCH_HOME": str(local_home)}
    assert run_pybatch("local", "status", env=env).returncode == 3
    migrated = run_pybatch("migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    assert "using the embedded cluster in" in migrated.stderr and str(local_home) in migrated.stderr
    status = run_pybatch("local", "status", env=env)
    assert status.returncode == 0 and status.stdout.startswith("running")
    url = run_pybatch("local", "url", env=env).stdout.strip()
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT current_setting('shared_preload_libraries'), "
                           "current_setting('listen_addresses')").fetchone()
        assert row == ("pg_cron", "127.0.0.1")
    assert run_pybatch("flush", env=env).returncode == 0
    assert run_pybatch("local", "stop", env=env).returncode == 0
    assert run_pybatch("local", "status", env=env).returncode == 3
    refused = run_pybatch("--no-embedded", "flush", env=env)
    assert_one_line_error(refused, "no database configured", code=2)


def test_psql_passes_its_options_through(dsn: str) -> None:
    result = run_pybatch("--dsn", dsn, "psql", "-At", "-c", "SELECT count(*) FROM pybatch.heartbeats")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0"
    dashed = run_pybatch("--dsn", dsn, "psql", "--", "-At", "-c", "SELECT 'x'")
    assert dashed.stdout.strip() == "x"
