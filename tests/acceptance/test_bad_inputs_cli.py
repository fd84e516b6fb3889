"""Runs every CLI entry of the bad-input catalogue (tests/bad_inputs.py) as a subprocess:
exit status non-zero, exactly one line on stderr matching the entry, no traceback."""

from __future__ import annotations

import re
import socket
import subprocess
import tempfile
from collections.abc import Iterator

import psycopg
import psycopg.conninfo
import pytest
from psycopg import sql

from pybatch.client import HeartbeatClient
from pybatch.errors import PybatchError
from pybatch.local import LocalCluster
from tests.bad_inputs import CLI, BadInput, by_surface
from tests.conftest import run_pybatch

ENTRIES = by_surface(CLI)
DATA_DRIVEN = [e for e in ENTRIES if e.argv]


def assert_one_line_error(entry: BadInput, result: subprocess.CompletedProcess[str], *, secret: str = "") -> None:
    # argparse usage errors (exit 2) print the usage synopsis first; the error is still one line.
    lines = [
        line
        for line in result.stderr.splitlines()
        if line.strip() and not (result.returncode == 2 and (line.startswith("usage:") or line[0].isspace()))
    ]
    assert result.returncode != 0, (entry.id, result.stdout)
    assert len(lines) == 1, (entry.id, result.stderr)
    assert "Traceback" not in result.stderr
    assert entry.error is not None and re.search(entry.error, lines[0]), (entry.id, lines[0])
    if secret:
        assert secret not in result.stderr + result.stdout


@pytest.fixture
def readonly_dsn(dsn: str) -> Iterator[str]:
    with psycopg.connect(dsn, autocommit=True) as admin:
        name = sql.Identifier(admin.info.dbname)
        admin.execute("INSERT INTO public.workspace_agents (id) VALUES (gen_random_uuid())")
        admin.execute("INSERT INTO pybatch.heartbeats (agent_id) SELECT id FROM public.workspace_agents")
        admin.execute(sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = on").format(name))
        yield dsn
        admin.execute(sql.SQL("ALTER DATABASE {} RESET default_transaction_read_only").format(name))
        assert admin.execute("SELECT count(*) FROM pybatch.heartbeats").fetchone() == (1,)  # staging kept


@pytest.fixture
def busy_port() -> Iterator[str]:
    """A TCP port something already listens on (on every address, as a metrics server would)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("0.0.0.0", 0))
        listener.listen()
        yield str(listener.getsockname()[1])


@pytest.mark.parametrize("entry", DATA_DRIVEN, ids=[e.id for e in DATA_DRIVEN])
def test_bad_cli_input(entry: BadInput, request: pytest.FixtureRequest, pg_cluster: LocalCluster) -> None:
    with tempfile.TemporaryDirectory() as home:
        values = {"port": str(pg_cluster.port), "home": home}
        if any("{busy_port}" in part for part in entry.argv):
            values["busy_port"] = request.getfixturevalue("busy_port")
        for name in ("dsn", "empty_dsn", "readonly_dsn"):
            if any("{" + name + "}" in part for part in (*entry.argv, *entry.env.values())):
                values[name] = request.getfixturevalue(name)

        def fill(text: str) -> str:
            for key, value in values.items():
                text = text.replace("{" + key + "}", value)
            return text

        result = run_pybatch(*(fill(a) for a in entry.argv), env={k: fill(v) for k, v in entry.env.items()}, timeout=60)
        assert_one_line_error(entry, result)
        assert "unexpected error" not in result.stderr


def test_every_cli_entry_is_run() -> None:
    scenarios = {"wrong_password_cli_and_client": test_wrong_password}
    assert {e.id for e in ENTRIES} == {e.id for e in DATA_DRIVEN} | set(scenarios)


PASSWORD_ROLE = "pw_user"
SECRET = "s3cret-Correct"
WRONG = "wr0ng-Guess"


@pytest.fixture
def scram_cluster(own_cluster: LocalCluster) -> LocalCluster:
    """own_cluster with a password role that pg_hba makes authenticate by scram-sha-256."""
    with psycopg.connect(own_cluster.url(), autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(PASSWORD_ROLE), sql.Literal(SECRET))
        )
        admin.execute(sql.SQL("GRANT ALL ON SCHEMA pybatch TO {}").format(sql.Identifier(PASSWORD_ROLE)))
        hba = own_cluster.datadir / "pg_hba.conf"
        hba.write_text(f"host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        admin.execute("SELECT pg_reload_conf()")
    return own_cluster


def test_wrong_password(scram_cluster: LocalCluster) -> None:
    (entry,) = [e for e in ENTRIES if e.id == "wrong_password_cli_and_client"]
    base = f"host=127.0.0.1 port={scram_cluster.port} dbname=pybatch user={PASSWORD_ROLE}"
    # The right password works, so the failure below is the password and nothing else.
    with psycopg.connect(f"{base} password={SECRET}") as ok:
        assert ok.execute("SELECT current_user").fetchone() == (PASSWORD_ROLE,)
    result = run_pybatch("--dsn", f"{base} password={WRONG}", "flush")
    assert_one_line_error(entry, result, secret=WRONG)
    result = run_pybatch(
        "flush", env={"PYBATCH_DSN": f"postgresql://{PASSWORD_ROLE}:{WRONG}@127.0.0.1:{scram_cluster.port}/pybatch"}
    )
    assert_one_line_error(entry, result, secret=WRONG)
    with pytest.raises(PybatchError) as info, HeartbeatClient(f"{base} password={WRONG}") as client:
        client.beat("00000000-0000-0000-0000-000000000001")
    assert entry.error and re.search(entry.error, str(info.value)) and WRONG not in str(info.value)
