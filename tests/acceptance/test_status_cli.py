"""status, doctor, sql, uninstall and config as subprocesses against a real database."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg import sql as psql

from pybatch import migrate, settings
from pybatch.errors import ConfigError, InvalidSetting
from pybatch.flush import flush
from pybatch.schedule import cron
from tests.conftest import run_pybatch
from tests.helpers import connected

# The stable `status --json` document (docs/status-json.md): keys per object.
STATUS_KEYS = {
    "schema_version",
    "in_recovery",
    "health",
    "staging",
    "recent_flushes",
    "agents",
    "settings",
    # added by migration 0005 (schema_version 1 allows new keys)
    "pending",
    "quarantine",
    "staleness",
}
HEALTH_KEYS = {
    "status",
    "reason",
    "last_success_at",
    "last_success_age_seconds",
    "flush_interval_seconds",
    "last_failure_at",
    "last_error",
    "behind",
    "flush_lock_held_by",
    "max_beat_wait_seconds",
    "worst_staleness_seconds",
}
PENDING_KEYS = {"agents", "beats", "deferred_agents", "oldest_beat_at", "oldest_beat_age_seconds"}
QUARANTINE_KEYS = {"agents", "beats", "oldest_quarantined_at", "next_retry_at", "sample_agent", "sample_error"}
STALENESS_KEYS = {
    "verdict",
    "allowed",
    "reason",
    "heartbeat_period_seconds",
    "client_write_interval_seconds",
    "flush_interval_seconds",
    "flush_duration_seconds",
    "flush_duration_measured",
    "worst_staleness_seconds",
    "inactive_timeout_seconds",
    "margin_seconds",
    "max_flush_interval_seconds",
}
STAGING_KEYS = {
    "available",
    "reason",
    "estimated",
    "method",
    "rows_staged",
    "distinct_agents",
    "oldest_beat_at",
    "newest_beat_at",
    "oldest_beat_age_seconds",
    "newest_beat_age_seconds",
    "size_bytes",
}
FLUSH_KEYS = {
    "flush_id",
    "started_at",
    "succeeded",
    "rows_staged",
    "agents_updated",
    "stale_heartbeats",
    "unknown_heartbeats",
    "future_heartbeats",
    "duration_seconds",
    "error",
    "passes",
    "hot_updates",
    "deferred_agents",
    "quarantined_agents",
    "newest_event_at",
    "heap_bytes",
    "index_bytes",
    "finished_at",  # started_at + duration
    "completed_at",  # null while running or when interrupted
}
AGENT_KEYS = {"total", "by_status", "newer_heartbeat_staged"}
SETTINGS_KEYS = {
    "flush_interval_seconds",
    "inactive_timeout_seconds",
    "future_tolerance_seconds",
    "history_retention_seconds",
    "max_rows_per_flush",
    "created_workspace_agents",
    "heartbeat_period_seconds",
    "client_write_interval_seconds",
}


def one_line_error(result, *fragments: str) -> None:  # type: ignore[no-untyped-def]
    assert result.returncode != 0 and "Traceback" not in result.stderr, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def status_json(dsn: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    result = run_pybatch("--dsn", dsn, "status", "--json")
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout)


def test_status_json_keys_and_exit_codes(conn: psycopg.Connection, dsn: str) -> None:
    code, doc = status_json(dsn)
    assert code == 4 and doc["health"]["status"] == "stalled"  # never flushed
    assert set(doc) == STATUS_KEYS and doc["schema_version"] == 1
    assert set(doc["health"]) == HEALTH_KEYS and set(doc["staging"]) == STAGING_KEYS
    assert set(doc["agents"]) == AGENT_KEYS and set(doc["settings"]) == SETTINGS_KEYS
    assert set(doc["pending"]) == PENDING_KEYS and set(doc["quarantine"]) == QUARANTINE_KEYS
    assert set(doc["staleness"]) == STALENESS_KEYS
    assert set(doc["agents"]["by_status"]) == {"connecting", "connected", "disconnected", "timeout"}

    agent = uuid.uuid4()
    conn.execute("INSERT INTO public.workspace_agents (id) VALUES (%s)", (agent,))
    conn.execute("INSERT INTO pybatch.heartbeats (agent_id) VALUES (%s), (%s)", (agent, agent))
    code, doc = status_json(dsn)
    assert doc["staging"]["rows_staged"] == 2 and doc["agents"]["newer_heartbeat_staged"] == 1
    flush(conn)
    code, doc = status_json(dsn)
    assert code == 0 and doc["health"]["status"] == "ok"
    assert set(doc["recent_flushes"][0]) == FLUSH_KEYS and doc["recent_flushes"][0]["rows_staged"] == 2
    assert doc["agents"]["by_status"]["connected"] == 1 and doc["agents"]["total"] == 1

    conn.execute("DELETE FROM pybatch.flush_log")
    # late: the last success 3 flush intervals ago (over 2, at most 5), whatever the default interval.
    conn.execute(
        "INSERT INTO pybatch.flush_log (started_at, duration, completed_at) "
        "SELECT now() - 3 * flush_interval, '0', now() - 3 * flush_interval FROM pybatch.settings"
    )
    code, doc = status_json(dsn)
    assert code == 3 and doc["health"]["status"] == "late"


def test_status_tables_for_people(conn: psycopg.Connection, dsn: str) -> None:
    flush(conn)
    result = run_pybatch("--dsn", dsn, "status")
    assert result.returncode == 0, result.stderr
    for fragment in ("health: OK", "staging", "recent flushes", "agents", "connected"):
        assert fragment in result.stdout


def test_doctor_lines_and_exit_codes(dsn: str) -> None:
    broken = run_pybatch("--dsn", dsn, "doctor")
    assert broken.returncode == 1, broken
    lines = broken.stdout.splitlines()
    assert lines and all(line.split()[0] in ("OK", "WARN", "FAIL") for line in lines)
    assert any(line.startswith("FAIL cron_job") for line in lines)
    connected(dsn, cron.install, 5)  # the default interval: 10 s would leave the staleness budget tight (a WARN)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            flush(conn)
        healthy = run_pybatch("--dsn", dsn, "doctor")
        assert healthy.returncode == 0, healthy.stdout
        assert all(line.startswith("OK") for line in healthy.stdout.splitlines()), healthy.stdout
    finally:
        connected(dsn, cron.remove)


def test_sql_all_needs_no_database_and_pending_needs_one(dsn: str) -> None:
    every = run_pybatch("sql", "--all", env={"PYBATCH_NO_EMBEDDED": "1"})
    assert every.returncode == 0, every.stderr
    for state in connected(dsn, migrate.status):
        assert f"-- migration {state.id}" in every.stdout
    assert "CREATE OR REPLACE VIEW pybatch.health" in every.stdout  # the routines and views follow the migrations
    pending = run_pybatch("--dsn", dsn, "sql")
    assert pending.returncode == 0 and "no pending migrations" in pending.stdout
    one_line_error(run_pybatch("sql", env={"PYBATCH_NO_EMBEDDED": "1"}), "no database configured")


def tables(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT table_schema || '.' || table_name FROM information_schema.tables "
            "WHERE table_schema IN ('public', 'pybatch')"
        ).fetchall()
    return {r[0] for r in rows}


def test_uninstall_keeps_a_workspace_agents_it_did_not_create(empty_dsn: str) -> None:
    agent = uuid.uuid4()
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE public.workspace_agents (id uuid PRIMARY KEY, name text NOT NULL DEFAULT 'a', "
            "created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now(), "
            "first_connected_at timestamptz, last_connected_at timestamptz, disconnected_at timestamptz, "
            "last_connected_replica_id uuid, connection_timeout_seconds integer NOT NULL DEFAULT 0)"
        )
        conn.execute("INSERT INTO public.workspace_agents (id, name) VALUES (%s, 'kept')", (agent,))
    connected(empty_dsn, migrate.apply)
    refused = run_pybatch("--dsn", empty_dsn, "uninstall", input="yes\n")
    one_line_error(refused, "--yes")
    assert refused.returncode == 1  # not confirmed, as the README's table says (2 is for usage errors)
    assert "pybatch.settings" in tables(empty_dsn)

    result = run_pybatch("--dsn", empty_dsn, "uninstall", "--yes")
    assert result.returncode == 0, result.stderr
    dbname = psycopg.conninfo.conninfo_to_dict(empty_dsn)["dbname"]
    assert f"from database {dbname!r}" in result.stdout
    assert "kept: public.workspace_agents, 1 row(s)" in result.stdout
    assert "kept public.workspace_agents" in result.stdout
    assert tables(empty_dsn) == {"public.workspace_agents"}  # pybatch and yoyo's tables are gone
    with psycopg.connect(empty_dsn) as conn:
        assert conn.execute("SELECT name FROM public.workspace_agents WHERE id = %s", (agent,)).fetchone() == ("kept",)
        assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'pybatch'").fetchone() == (0,)


def test_uninstall_drops_the_workspace_agents_it_created(dsn: str) -> None:
    assert "public.workspace_agents" in tables(dsn)
    connected(dsn, cron.install, 10)
    with psycopg.connect(dsn, autocommit=True) as conn:
        agents = [uuid.uuid4() for _ in range(3)]
        conn.execute("INSERT INTO public.workspace_agents (id) SELECT unnest(%s::uuid[])", (agents,))
        conn.execute("INSERT INTO pybatch.heartbeats (agent_id) VALUES (%s)", (agents[0],))
        dbname = conn.info.dbname
    try:
        result = run_pybatch("--dsn", dsn, "uninstall", "--yes")
        assert result.returncode == 0, result.stderr
        # Before anything goes: the database, and each object with its row count.
        before = result.stdout.split("uninstalled from")[0]
        assert f"from database {dbname!r}" in before
        assert f"pg_cron job pybatch-flush-{dbname}" in before
        assert "table pybatch.heartbeats: 1 row(s) (staged heartbeats not yet flushed)" in before
        assert "table public.workspace_agents: 3 row(s) (pybatch created it)" in before
        assert re.search(r"table pybatch\.settings: 1 row\(s\)", before)
        # Progress while it works (stdout: stderr is for the one line of an error).
        assert "removing the pg_cron jobs" in result.stdout and "dropping schema pybatch" in result.stdout
        assert "removed 2 pg_cron job(s)" in result.stdout and "dropped public.workspace_agents" in result.stdout
        assert tables(dsn) == set()
        assert connected(dsn, cron.remove) == 0  # uninstall already removed the jobs
    finally:
        connected(dsn, cron.remove)


def test_config_show_and_set(dsn: str) -> None:
    assert run_pybatch("--dsn", dsn, "config", "set", "flush_interval", "5s").returncode == 0
    assert run_pybatch("--dsn", dsn, "config", "set", "max-rows-per-flush", "5000").returncode == 0
    shown = run_pybatch("--dsn", dsn, "config", "show", "--json")
    settings = json.loads(shown.stdout)
    assert settings["flush_interval_seconds"] == 5.0 and settings["max_rows_per_flush"] == 5000
    one_line_error(
        run_pybatch("--dsn", dsn, "config", "set", "created_workspace_agents", "true"),
        "created_workspace_agents is not a setting",
        "`pybatch uninstall` drops the table only then",
        "flush_interval",
    )
    one_line_error(run_pybatch("--dsn", dsn, "config", "set", "inactive_timeout", "soon"), "inactive_timeout", "soon")
    one_line_error(run_pybatch("--dsn", dsn, "config", "set", "max_rows_per_flush", "-3"), "max_rows_per_flush")
    assert json.loads(run_pybatch("--dsn", dsn, "config", "show", "--json").stdout) == settings


def test_uninstall_asks_on_a_terminal(dsn: str) -> None:
    """On a TTY, anything but 'yes' keeps everything; 'yes' uninstalls."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYBATCH_", "PG"))}
    for answer, code in (("no\n", 1), ("yes\n", 0)):
        leader, follower = pty.openpty()
        try:
            os.write(leader, answer.encode())
            result = subprocess.run(
                [sys.executable, "-m", "pybatch", "--dsn", dsn, "uninstall"],
                stdin=follower,
                capture_output=True,
                text=True,
                env=env,
                timeout=120,
                check=False,
            )
        finally:
            os.close(leader)
            os.close(follower)
        assert result.returncode == code, result
        assert ("pybatch.settings" in tables(dsn)) == (answer == "no\n")


# -- config show prints what config set accepts (issue 12, item 11); ranges (issue 11, item 7) ----------
def config_table(dsn: str) -> dict[str, str]:
    shown = run_pybatch("--dsn", dsn, "config", "show")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[-1].startswith("(created_workspace_agents = ") and "not a setting" in lines[-1], lines[-1]
    rows = [line.split() for line in lines[1:-1] if line.strip()]
    return {row[0]: " ".join(row[1:]) for row in rows}


def test_config_show_prints_values_config_set_takes_back(dsn: str) -> None:
    defaults = config_table(dsn)
    assert set(defaults) == set(settings.SETTABLE)  # only what `config set` takes
    for key in settings.DURATION_SETTINGS:  # never Python's 0:00:10 or 7 days, 0:00:00
        assert re.fullmatch(r"[0-9]+(\.[0-9]+)?(ms|s|m|h|d)", defaults[key]), (key, defaults[key])
    assert defaults["history_retention"] == "7d"

    wanted = {
        "flush_interval": "1.5s",
        "inactive_timeout": "90s",
        "future_tolerance": "0s",
        "history_retention": "36h",
        "max_rows_per_flush": "unlimited",
    }
    for key, value in wanted.items():
        result = run_pybatch("--dsn", dsn, "config", "set", key, value)
        assert (result.returncode, result.stdout.strip()) == (0, f"{key} = {value}"), result
    shown = config_table(dsn)
    assert {key: shown[key] for key in wanted} == wanted

    # Round trip: setting every value exactly as shown changes nothing.
    before = json.loads(run_pybatch("--dsn", dsn, "config", "show", "--json").stdout)
    for key in settings.SETTABLE:
        assert run_pybatch("--dsn", dsn, "config", "set", key, shown[key]).returncode == 0
    assert config_table(dsn) == shown
    assert json.loads(run_pybatch("--dsn", dsn, "config", "show", "--json").stdout) == before

    # ... and so do the defaults, shown as `7d` and accepted as such.
    for key in settings.SETTABLE:
        assert run_pybatch("--dsn", dsn, "config", "set", key, defaults[key]).returncode == 0
    assert config_table(dsn) == defaults


def test_set_setting_checks_every_bound_and_names_key_and_value(conn: psycopg.Connection) -> None:
    before = settings.read_settings(conn)
    for key, (low, high) in settings.SETTING_BOUNDS.items():
        update = psql.SQL("UPDATE pybatch.settings SET {} = %s").format(psql.Identifier(key))
        # Both bounds are accepted, by the parser and by the table's CHECK (set_setting would
        # also weigh the staleness budget, which some bounds break on purpose)...
        for bound in (low, high):
            assert settings.parse_setting(key, settings.format_setting(key, bound)) == (key, bound)
            conn.execute(update, (bound,))
        conn.execute(update, (getattr(before, key),))
        # ... one step beyond either is refused, naming key and value, by both; nothing changes.
        step = timedelta(microseconds=1) if isinstance(low, timedelta) else 1
        for outside in (low - step, high + step):  # type: ignore[operator]
            text = settings.format_setting(key, outside)
            with pytest.raises(InvalidSetting, match=re.escape(f"{key}: {text!r}")) as info:
                settings.set_setting(conn, key, text)
            assert (info.value.key, info.value.value) == (key, text)
            assert isinstance(info.value, ConfigError)
            with pytest.raises(psycopg.errors.CheckViolation):
                conn.execute(update, (outside,))
    settings.set_setting(conn, "history_retention", "7d")
    for key in settings.SETTABLE:
        settings.set_setting(conn, key, settings.format_setting(key, getattr(before, key)))
    assert settings.read_settings(conn) == before
    with pytest.raises(InvalidSetting, match=r"history_retention: '99999999h' is out of range"):
        settings.set_setting(conn, "history_retention", "99999999h")
    with pytest.raises(InvalidSetting, match=r"flush_interval: '99999999999999999999h' is out of range"):
        settings.set_setting(conn, "flush_interval", "99999999999999999999h")
    assert settings.read_settings(conn) == before


# -- the inspection SQL from any directory (issue 12, item 9) ---------------------------------------------
def test_sql_inspect_pipes_into_psql_from_any_directory(dsn: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYBATCH_", "PG"))}
    env["PYBATCH_NO_EMBEDDED"] = "1"  # printing the SQL needs no database

    def pybatch_in_tmp(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pybatch", *args],
            cwd=tmp_path,
            env=env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    printed = pybatch_in_tmp("sql", "inspect")
    assert printed.returncode == 0, printed.stderr
    assert "pybatch.health" in printed.stdout
    # The hint names pybatch as it was run here, not a hard-coded .venv/bin/pybatch.
    assert f"-m pybatch sql inspect | {sys.executable} -m pybatch psql" in printed.stdout.splitlines()[0]
    script = Path(sys.executable).parent / "pybatch"
    elsewhere = ":".join(p for p in env["PATH"].split(":") if p and Path(p) != script.parent)
    for path_env, shown_as in ((elsewhere, str(script)), (f"{script.parent}:{elsewhere}", "pybatch")):
        hinted = subprocess.run(
            [str(script), "sql", "inspect"],
            cwd=tmp_path,
            env={**env, "PATH": path_env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert hinted.returncode == 0, hinted.stderr
        assert f"with:  {shown_as} sql inspect | {shown_as} psql" in hinted.stdout.splitlines()[0], hinted.stdout
    shown = pybatch_in_tmp("psql", "--dsn", dsn, "-v", "ON_ERROR_STOP=1", stdin=printed.stdout)
    assert shown.returncode == 0, shown.stderr
    assert "== health" in shown.stdout and "ERROR" not in shown.stderr
    one_line_error(pybatch_in_tmp("sql", "--all", "inspect"), "--all applies to `pybatch sql migrations`")
    migrations = pybatch_in_tmp("sql", "migrations", "--all")
    assert migrations.returncode == 0 and "-- migration 0001_baseline" in migrations.stdout


def test_nothing_staged_or_pending_prints_no_placeholder_age(dsn: str) -> None:
    """`oldest beat - old` (issue 22): with nothing staged or pending there is no oldest beat to age."""
    shown = run_pybatch("--dsn", dsn, "status")
    assert "pending (handed off, not merged yet): 0 agent(s), 0 deferred (row locked)\n" in shown.stdout, shown.stdout
    checked = run_pybatch("--dsn", dsn, "doctor")
    for output in (shown.stdout, checked.stdout):
        assert "- old" not in output and "oldest -" not in output, output
    assert "staging holds 0 heartbeats" in checked.stdout, checked.stdout
