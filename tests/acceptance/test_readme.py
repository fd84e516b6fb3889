"""README.md's commands run as written. Fenced blocks after a `<!-- test: NAME -->` line are
extracted and run as subprocesses: the "use it with your database" walk against a fresh, empty
database (PYBATCH_DSN), then upgrade and uninstall. The after-demo and cleanup blocks run in
tests/acceptance/test_demo_cli.py, right after a real demo."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from pybatch.local import LocalCluster

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
MARK = re.compile(r"^<!-- test: ([a-z-]+) -->\n```(\w+)\n(.*?)^```$", re.M | re.S)


def readme_blocks(name: str, language: str | None = None) -> list[str]:
    """The bodies of the README's fenced blocks marked `<!-- test: name -->`."""
    return [
        body
        for tag, lang, body in MARK.findall(README.read_text(encoding="utf-8"))
        if tag == name and (language is None or lang == language)
    ]


def _commands(block: str) -> list[str]:
    """One command per line, comments dropped (the README aligns them after the command)."""
    lines = [re.sub(r"\s+#\s.*$", "", line).strip() for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _env(dsn: str) -> dict[str, str]:
    """A user's shell after `export PYBATCH_DSN=...` and `source .venv/bin/activate`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYBATCH_", "PG"))}
    env["PYBATCH_DSN"] = dsn
    env["PYBATCH_NO_EMBEDDED"] = "1"  # a README step that forgot the DSN must fail, not use another database
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _run(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", command],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, (
        f"README command {command!r} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def _ensure_roles(conn: psycopg.Connection, block: str) -> list[str]:
    """The README grants to existing roles, which a real deployment has: create those it names."""
    roles = [shlex.split(c)[3] for c in _commands(block) if c.startswith("pybatch grant ")]
    for role in roles:
        with contextlib.suppress(psycopg.errors.DuplicateObject):  # another test in this cluster made it
            conn.execute(psycopg.sql.SQL("CREATE ROLE {}").format(psycopg.sql.Identifier(role)))
    return roles


def test_the_readme_has_every_walked_block() -> None:
    for name in ("quick-start", "after-demo", "your-database", "upgrade", "uninstall", "cleanup"):
        assert readme_blocks(name), f"README lost its `<!-- test: {name} -->` block"
    (python,) = readme_blocks("python", "python")
    assert python


def test_quick_start_is_the_two_make_targets() -> None:
    (block,) = readme_blocks("quick-start")
    assert _commands(block) == ["make demo", "make test"]
    for target in ("demo", "test"):  # each sets up what it needs first
        dry = subprocess.run(["make", "-n", target], cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
        assert dry.returncode == 0, dry.stderr
        assert "scripts/setup.sh" in dry.stdout, dry.stdout


def test_use_it_with_your_database_as_written(pg_cluster: LocalCluster, empty_dsn: str) -> None:
    env = _env(empty_dsn)
    (walk,) = readme_blocks("your-database")
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        roles = _ensure_roles(conn, walk)
    assert len(roles) == 3
    try:
        results = {command: _run(command, env) for command in _commands(walk)}
        outputs = [result.stdout for result in results.values()]
        # The README's own settings raise no warning (its cron interval keeps the staleness margin).
        for command, result in results.items():
            assert "warning" not in result.stderr.lower() and "tight" not in result.stderr, (command, result.stderr)
        (python,) = readme_blocks("python", "python")
        ran = subprocess.run(
            [sys.executable, "-c", python], cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert ran.returncode == 0, ran.stderr
        assert "beats_accepted=1" in ran.stdout, ran.stdout
        assert "rows_written=1" in ran.stdout, ran.stdout  # printed after close(), which wrote the beat

        with psycopg.connect(empty_dsn, autocommit=True) as conn:
            assert conn.execute("SELECT to_regnamespace('pybatch') IS NOT NULL").fetchone() == (True,)
            for role in roles:
                usage = conn.execute("SELECT has_schema_privilege(%s, 'pybatch', 'USAGE')", (role,)).fetchone()
                assert usage == (True,), role
            agent = conn.execute(
                "SELECT status FROM pybatch.agent_status WHERE agent_id = 'e0000000-0000-4000-8000-000000000001'"
            ).fetchone()
            assert agent == ("disconnected",)  # the README's client snippet disconnected the quick start's agent
        with psycopg.connect(pg_cluster.conninfo("postgres"), autocommit=True) as conn:
            dbname = psycopg.conninfo.conninfo_to_dict(empty_dsn)["dbname"]
            jobs = conn.execute("SELECT jobname FROM cron.job WHERE database = %s", (dbname,)).fetchall()
        assert (f"pybatch-flush-{dbname}",) in jobs
        assert any(": connected," in out for out in outputs)  # the quick start example read its agent back

        for command in _commands(readme_blocks("upgrade")[0]):
            _run(command, env)
        for command in _commands(readme_blocks("uninstall")[0]):
            _run(command, env)
        with psycopg.connect(empty_dsn, autocommit=True) as conn:
            assert conn.execute("SELECT to_regnamespace('pybatch') IS NULL").fetchone() == (True,)
        with psycopg.connect(pg_cluster.conninfo("postgres"), autocommit=True) as conn:
            left = conn.execute("SELECT count(*) FROM cron.job WHERE database = %s", (dbname,)).fetchone()
        assert left == (0,)
    finally:
        subprocess.run(
            [sys.executable, "-m", "pybatch", "cron", "remove"], env=env, capture_output=True, check=False, timeout=60
        )


def test_every_command_in_the_table_exists() -> None:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Commands", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `pybatch ([a-z]+)(?: ([a-z]+))?", section, re.M)
    assert len(rows) >= 15, rows
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYBATCH_", "PG"))}
    for command, sub in rows:
        argv = [command] + (
            [sub]
            if sub and command in ("migrate", "sql", "cron", "config", "local", "grant") and sub not in ("migrations",)
            else []
        )
        if command == "psql":
            continue  # everything after `psql` goes to psql itself
        helped = subprocess.run(
            [sys.executable, "-m", "pybatch", *argv, "--help"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert helped.returncode == 0, f"pybatch {' '.join(argv)} --help: {helped.stderr}"


@pytest.mark.parametrize("link", sorted(set(re.findall(r"\]\(((?:docs|examples)/[^)#]+)", README.read_text()))))
def test_links_resolve(link: str) -> None:
    assert (REPO / link).is_file(), link


def test_logging_block_shows_the_client_outage_lines_with_their_fields() -> None:
    (block,) = readme_blocks("logging", "python")
    outage = (
        "\nfrom pybatch._core import WriteTracker\n"
        "from pybatch.errors import DatabaseUnavailable\n"
        "tracker = WriteTracker(1.0)\n"
        "tracker.failed(DatabaseUnavailable('server closed the connection'), waiting=3)\n"
        "tracker.failed(DatabaseUnavailable('server closed the connection'), waiting=3)\n"
        "tracker.succeeded(3)\n"
    )
    ran = subprocess.run(
        [sys.executable, "-c", block + outage], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert ran.returncode == 0, ran.stderr
    lines = ran.stderr.splitlines()
    assert len(lines) == 2, ran.stderr  # one line as the outage begins, one as it ends: not one per retry
    assert lines[0].startswith("ERROR pybatch._core: heartbeat writes failing")
    assert "'error_type': 'DatabaseUnavailable'" in lines[0] and "'waiting': 3" in lines[0]
    assert lines[1].startswith("WARNING pybatch._core: heartbeat writes recovered") and "outage_seconds" in lines[1]
