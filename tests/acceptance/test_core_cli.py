"""The core CLI as a subprocess: happy paths and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

import pybatch
from pybatch import __version__
from pybatch.cli import _subparsers, build_parser
from pybatch.cli.common import NO_ENV
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
    assert "0001_baseline" in result.stdout
    assert run_pybatch("--dsn", empty_dsn, "migrate").stdout.strip() == "schema is up to date"
    status = run_pybatch("--dsn", empty_dsn, "migrate", "--status")
    assert "applied  0001_baseline" in status.stdout
    flushed = run_pybatch("--dsn", empty_dsn, "flush", "--json")
    assert flushed.returncode == 0 and '"rows_staged": 0' in flushed.stdout
    env_flush = run_pybatch("flush", env={"PYBATCH_DSN": empty_dsn})
    assert env_flush.returncode == 0 and "rows_staged=0" in env_flush.stdout


def test_flush_in_lanes_from_the_command_line(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO public.workspace_agents (id) SELECT gen_random_uuid() FROM generate_series(1, 500);"
            "INSERT INTO pybatch.heartbeats (agent_id) SELECT id FROM public.workspace_agents"
        )
    flushed = run_pybatch("--dsn", dsn, "flush", "--lanes", "3", "--json")
    assert flushed.returncode == 0, flushed.stderr
    document = json.loads(flushed.stdout)
    assert (document["rows_staged"], document["agents_updated"], document["error"]) == (500, 500, None)
    assert document["passes"] > 3  # ~100 narrow rows a page: several rounds of three lanes
    from_env = run_pybatch("--dsn", dsn, "flush", env={"PYBATCH_LANES": "2"})
    assert from_env.returncode == 0 and "rows_staged=0" in from_env.stdout, from_env.stderr


def test_flush_failure_exits_non_zero_and_keeps_staging(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO public.workspace_agents (id) VALUES ('00000000-0000-0000-0000-000000000001')")
        conn.execute("INSERT INTO pybatch.heartbeats (agent_id) VALUES ('00000000-0000-0000-0000-000000000001')")
        conn.execute("""CREATE FUNCTION public.boom() RETURNS trigger LANGUAGE plpgsql AS $$
                        BEGIN RAISE EXCEPTION 'boom'; END $$;
                        CREATE TRIGGER boom BEFORE UPDATE ON public.workspace_agents
                        FOR EACH ROW EXECUTE FUNCTION public.boom()""")
        result = run_pybatch("--dsn", dsn, "flush")
        assert_one_line_error(result, "flush failed and kept what it had not merged", "boom", code=1)
        # Kept: still staged, or handed off to pybatch.pending for the next flush (migration 0004).
        kept = conn.execute(
            "SELECT (SELECT count(*) FROM pybatch.heartbeats) + (SELECT count(*) FROM pybatch.pending)"
        ).fetchone()
        assert kept == (1,)
        conn.execute("DROP TRIGGER boom ON public.workspace_agents")
        assert run_pybatch("--dsn", dsn, "flush").returncode == 0
        merged = conn.execute("SELECT last_connected_at IS NOT NULL FROM public.workspace_agents").fetchone()
        assert merged == (True,)


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
        row = conn.execute(
            "SELECT current_setting('shared_preload_libraries'), current_setting('listen_addresses')"
        ).fetchone()
        assert row == ("pg_cron", "127.0.0.1")
    assert run_pybatch("flush", env=env).returncode == 0
    stopped = run_pybatch("local", "stop", env=env)
    assert stopped.returncode == 0 and stopped.stdout.startswith("stopped"), stopped
    assert run_pybatch("local", "status", env=env).returncode == 3
    refused = run_pybatch("--no-embedded", "flush", env=env)
    assert_one_line_error(refused, "no database configured", code=2)
    # A stopped cluster stays stopped: commands say so instead of starting it again (the README's
    # cleanup then removes the data of a stopped server, not a running one).
    for command in (["status"], ["flush"], ["cron", "status"]):
        refused = run_pybatch(*command, env=env)
        assert_one_line_error(refused, "the embedded cluster is stopped: `", "local start`", code=1)
    assert run_pybatch("local", "status", env=env).returncode == 3
    again = run_pybatch("local", "stop", env=env)
    assert again.returncode == 0 and again.stdout.startswith("not running") and "nothing to stop" in again.stdout
    # An orphan on the port (a server whose postmaster.pid is gone, or another program): not "stopped".
    port = int((local_home / "port").read_text())
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as orphan:
        orphan.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        orphan.bind(("127.0.0.1", port))
        orphan.listen()
        assert_one_line_error(run_pybatch("local", "stop", env=env), f"still listens on its port {port}", code=1)
    restarted = run_pybatch("local", "start", env=env)
    assert restarted.returncode == 0, restarted.stderr
    assert run_pybatch("status", env=env).returncode in (0, 3, 4, 5)  # it runs again: no refusal


def test_local_stop_with_nothing_there_says_so(tmp_path: Path) -> None:
    result = run_pybatch("local", "stop", env={"PYBATCH_HOME": str(tmp_path / "cluster")})
    assert result.returncode == 0 and result.stdout.startswith("not initialised") and "nothing to stop" in result.stdout


def test_psql_passes_its_options_through(dsn: str) -> None:
    result = run_pybatch("--dsn", dsn, "psql", "-At", "-c", "SELECT count(*) FROM pybatch.heartbeats")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0"
    dashed = run_pybatch("--dsn", dsn, "psql", "--", "-At", "-c", "SELECT 'x'")
    assert dashed.stdout.strip() == "x"


# -- global options after the command (issue 12, item 5) -------------------------------------------------
def test_global_options_work_after_the_command(dsn: str, empty_dsn: str, tmp_path: Path) -> None:
    migrated = run_pybatch("migrate", "--dsn", empty_dsn)
    assert migrated.returncode == 0 and "0001_baseline" in migrated.stdout, migrated.stderr
    status = run_pybatch("migrate", "--status", "--dsn", empty_dsn)
    assert status.returncode == 0 and "applied  0001_baseline" in status.stdout, status.stderr
    shown = run_pybatch("config", "show", "--json", "--dsn", dsn)
    assert shown.returncode == 0 and "flush_interval_seconds" in shown.stdout, shown.stderr
    # --log-level after a nested command takes effect (set_setting logs at info).
    changed = run_pybatch("config", "set", "flush_interval", "5s", "--log-level", "info", "--dsn", dsn)
    assert changed.returncode == 0 and "INFO pybatch.settings: setting changed" in changed.stderr, changed
    flushed = run_pybatch("flush", "--dsn", dsn, "--json")
    assert flushed.returncode == 0 and '"rows_staged": 0' in flushed.stdout, flushed.stderr
    pending = run_pybatch("sql", "--dsn", dsn)
    assert pending.returncode == 0 and "no pending migrations" in pending.stdout, pending
    # The later --dsn wins: the one before the command points nowhere.
    later = run_pybatch("--dsn", "host=127.0.0.1 port=1 dbname=x connect_timeout=3", "status", "--json", "--dsn", dsn)
    assert "Traceback" not in later.stderr and '"schema_version": 1' in later.stdout, later
    refused = run_pybatch("flush", "--no-embedded", env={"PYBATCH_HOME": str(tmp_path)})
    assert_one_line_error(refused, "no database configured", code=2)
    assert not (tmp_path / "data").exists()
    loud = run_pybatch("flush", "--log-level", "loud", "--dsn", dsn)
    assert loud.returncode == 2 and "argument --log-level: invalid choice: 'loud'" in loud.stderr


def test_psql_takes_global_options_after_psql_and_passes_the_rest(dsn: str) -> None:
    result = run_pybatch("psql", "--dsn", dsn, "-At", "-c", "SELECT count(*) FROM pybatch.settings")
    assert result.returncode == 0 and result.stdout.strip() == "1", result.stderr
    # A value of psql's own option stays psql's, even when it looks like ours.
    text = run_pybatch("--dsn", dsn, "psql", "-At", "-c", "SELECT '--dsn'")
    assert text.returncode == 0 and text.stdout.strip() == "--dsn", text.stderr
    equals = run_pybatch("psql", "-At", f"--dsn={dsn}", "--log-level=warning", "-c", "SELECT 2")
    assert equals.returncode == 0 and equals.stdout.strip() == "2", equals.stderr


def test_subcommand_help_shows_the_global_options() -> None:
    for argv in (["migrate"], ["config", "show"], ["cron", "install"], ["grant", "writer"], ["sql", "inspect"]):
        shown = run_pybatch(*argv, "--help")
        assert shown.returncode == 0, shown.stderr
        words = " ".join(shown.stdout.split())
        for text in ("--dsn", "env: PYBATCH_DSN", "env: PYBATCH_NO_EMBEDDED", "env: PYBATCH_LOG_LEVEL"):
            assert text in words, (argv, text)


def test_every_option_names_its_environment_variable_or_has_none() -> None:
    """Each option's help says `env: NAME` for the variable it reads, or the option is one of
    cli.common.NO_ENV (one-shot actions and per-run choices), whose help names none."""
    parser = build_parser()
    source = "\n".join(path.read_text() for path in Path(pybatch.__file__).parent.rglob("*.py"))
    named: set[str] = set()
    checked = 0
    for command in [parser, *_subparsers(parser)]:
        for action in command._actions:
            for option in (o for o in action.option_strings if o.startswith("--")):
                checked += 1
                text = action.help or ""
                found = re.findall(r"env: (PYBATCH_[A-Z_]+)", text)
                if option in NO_ENV:
                    assert not found, (command.prog, option, text)
                else:
                    assert found, f"{command.prog} {option}: help names no env variable and it is not in NO_ENV"
                    named.update(found)
        command.format_help()  # every help renders
    assert (
        checked > 60
        and {"PYBATCH_DSN", "PYBATCH_NO_EMBEDDED", "PYBATCH_LOG_LEVEL", "PYBATCH_INTERVAL", "PYBATCH_METRICS_PORT"}
        <= named
    )
    for name in named:  # each variable a help names is read somewhere
        assert f'"{name}"' in source, name
    assert not NO_ENV & {"--dsn", "--no-embedded", "--log-level", "--interval", "--metrics-port"}


# -- the scheduler says what it does at the default log level (issue 12, item 8) -------------------------
class _Lines:
    """stderr of a running process, line by line, readable with a timeout."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, fragment: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                continue
            self.seen.append(line)
            if fragment in line:
                return line
        raise AssertionError(f"no line with {fragment!r} in {timeout}s: {self.seen}")

    def stop(self) -> list[str]:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)
        self.reader.join(timeout=30)  # every line read: stderr is at its end once the process exited
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return self.seen


def _scheduler(dsn: str, *args: str) -> _Lines:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYBATCH_", "PG"))}
    process = subprocess.Popen(
        [sys.executable, "-m", "pybatch", "scheduler", "--dsn", dsn, *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    return _Lines(process)


def _flushes(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pybatch.flush_log").fetchone()
    assert row is not None
    return int(row[0])


def _wait_for_flushes(dsn: str, count: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while _flushes(dsn) < count:
        assert time.monotonic() < deadline, f"fewer than {count} flushes in {timeout:.0f}s"
        time.sleep(0.1)


def test_scheduler_logs_its_start_and_each_change_of_leadership(dsn: str) -> None:
    leader = _scheduler(dsn, "--interval", "1s")
    standby: _Lines | None = None
    try:
        start = leader.wait_for("scheduler starting")
        database = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
        assert " INFO " in start and f"/{database} (from --dsn)" in start, start
        assert "interval 1s (--interval)" in start and "metrics off" in start, start
        assert " INFO " in leader.wait_for("became leader")

        standby = _scheduler(dsn, "--interval", "1s")
        standby.wait_for("scheduler starting")
        assert " INFO " in standby.wait_for("standing by")
        # Three more intervals on standby (three flushes by the leader): no more lines for them.
        _wait_for_flushes(dsn, _flushes(dsn) + 3)
        leader_lines = leader.stop()
        standby.wait_for("became leader")
        standby_lines = standby.stop()
    finally:
        for process in (leader, standby):
            if process is not None and process.process.poll() is None:
                process.process.kill()
    assert sum("standing by" in line for line in standby_lines) == 1, standby_lines
    assert sum("became leader" in line for line in standby_lines) == 1, standby_lines
    for lines in (leader_lines, standby_lines):
        assert sum("scheduler starting" in line for line in lines) == 1, lines
        assert not any(line.rstrip().endswith(("scheduler started", "serving metrics")) for line in lines), lines
        assert not any(" DEBUG " in line for line in lines), lines
        assert "Traceback" not in "\n".join(lines)


def test_scheduler_log_level_error_silences_the_lifecycle(dsn: str) -> None:
    quiet = _scheduler(dsn, "--interval", "1s", "--log-level", "error")
    try:
        _wait_for_flushes(dsn, 3)  # it led and flushed: the lines it would log have come and gone
        lines = quiet.stop()
    finally:
        if quiet.process.poll() is None:
            quiet.process.kill()
    assert quiet.process.returncode == 0, lines
    # Errors (a failing flush, say) still show; the lifecycle lines do not.
    assert not [line for line in lines if " ERROR " not in line], lines


# -- bench says what it costs and never rounds (issue 12, item 7) ----------------------------------------
def test_bench_announces_its_time_and_honours_fractional_seconds(dsn: str, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = run_pybatch(
        "--dsn",
        dsn,
        "bench",
        "--table",
        "minimal",
        "--strategies",
        "direct",
        "--agents",
        "20",
        "--period",
        "1s",
        "--flush-interval",
        "0.5s",
        "--seconds",
        "1.5s",
        "--warmup",
        "0.5s",
        "--json",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    announce = result.stderr.index("this bench takes about 2s: 1 strategy x (500ms warm-up + 1.5s measured)")
    assert announce < result.stderr.index("[direct] resetting"), result.stderr
    parameters = json.loads(out.read_text())["parameters"]
    assert parameters["seconds"] == parameters["seconds_requested"] == 1.5


def test_output_into_a_closed_pipe_ends_quietly() -> None:
    """`pybatch sql --all | head -5`: the reader leaves early; no `unexpected error: BrokenPipeError`."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # a reader that has already gone: every write fails with EPIPE
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYBATCH_", "PG"))}
        result = subprocess.run(
            [sys.executable, "-m", "pybatch", "--no-embedded", "sql", "--all"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert result.stderr == ""
    assert result.returncode == 141  # as a shell reports a writer killed by SIGPIPE
    piped = subprocess.run(
        f"{shlex.quote(sys.executable)} -m pybatch --no-embedded sql --all | head -5",
        shell=True,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert piped.returncode == 0 and piped.stderr == "" and len(piped.stdout.splitlines()) == 5


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["-V"], "unrecognized arguments: -V; the version is `pybatch --version`"),
        (["local", "--bogus"], "unrecognized arguments: --bogus"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_a_bad_flag_is_named_before_a_missing_command(argv: list[str], needle: str) -> None:
    result = run_pybatch(*argv, timeout=30)
    errors = [line for line in result.stderr.splitlines() if line.startswith("pybatch")]
    assert result.returncode == 2 and len(errors) == 1 and needle in errors[0], result.stderr
