"""`pybatch bench` as a subprocess (the demo: test_demo_cli.py): a tiny compressed run, checked for
the shape of its output and for relations that hold on any machine (never for speed)."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from pybatch.bench.fleet import BENCH_ID_SPAN
from pybatch.local import LocalCluster
from tests.conftest import TEMPLATE_DB, _fresh_database, run_pybatch

STRATEGIES = ["direct", "app_batch", "staged", "buffered"]
FIGURES = {
    "cpu_us_per_beat", "wal_bytes_per_beat", "row_versions_per_beat", "hot_share", "statements_per_s",
    "beat_p50_ms", "beat_p99_ms", "beat_max_ms", "flush_p50_ms", "flush_max_ms", "staleness_max_s",
}
AGENTS, PERIOD, FLUSH, SECONDS, COMPRESS = 200, 15.0, 10.0, 40.0, 20


@pytest.fixture(scope="module")
def bench_run(
    pg_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, dict[str, Any], str, str]]:
    """One tiny run of all four strategies in a fresh database, shared by the checks below."""
    for bench_dsn in _fresh_database(pg_cluster, TEMPLATE_DB):
        out = tmp_path_factory.mktemp("bench")
        json_path, png_path = out / "bench.json", out / "bench.png"
        result = run_pybatch(
            "--dsn", bench_dsn, "bench", "--agents", str(AGENTS), "--period", "15s", "--flush-interval", "10s",
            "--seconds", f"{SECONDS:g}s", "--compress", str(COMPRESS), "--json", str(json_path),
            "--plot", str(png_path), timeout=300,
        )
        assert result.returncode == 0, result.stderr
        assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with psycopg.connect(bench_dsn, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE id BETWEEN %s AND %s) FROM public.workspace_agents",
                BENCH_ID_SPAN,
            ).fetchone()
            version = conn.execute("SHOW server_version").fetchone()
        assert rows == (AGENTS, AGENTS)  # the bench agents, and nothing else
        assert version is not None
        yield result.stdout, json.loads(json_path.read_text()), result.stderr, str(version[0])


@pytest.mark.slow
def test_json_has_every_figure_for_every_strategy(bench_run: tuple[str, dict[str, Any], str, str]) -> None:
    _, doc, _, server_version = bench_run
    assert list(doc["strategies"]) == STRATEGIES
    for name in STRATEGIES:
        assert set(doc["strategies"][name]) >= FIGURES, name
    assert set(doc["figures"]) >= FIGURES
    params = doc["parameters"]
    assert (params["agents"], params["period_s"], params["flush_interval_s"], params["compress"]) == (
        AGENTS, PERIOD, FLUSH, COMPRESS)
    assert params["seconds"] == SECONDS
    assert doc["machine"]["cores"] == os.cpu_count()
    assert doc["machine"]["postgresql"] == server_version
    assert "20x" in doc["time_compression"]


@pytest.mark.slow
def test_output_shows_progress_the_table_and_the_compression(bench_run: tuple[str, dict[str, Any], str, str]) -> None:
    stdout, _, stderr, _ = bench_run
    for name in STRATEGIES:
        assert f"[{name}] measuring" in stderr
        assert any(line.startswith(name) for line in stdout.splitlines()), stdout
    assert "time compressed 20x" in stdout and "time compressed 20x" in stderr


@pytest.mark.slow
def test_figures_keep_their_relations(bench_run: tuple[str, dict[str, Any], str, str]) -> None:
    s = bench_run[1]["strategies"]
    offered = AGENTS / PERIOD * SECONDS
    for name in STRATEGIES:
        f = s[name]
        assert 0.75 * offered <= f["beats"] <= 1.25 * offered, (name, f["beats"])
        # /proc counts CPU in 10 ms ticks: a tiny batched run may round to 0.
        assert f["cpu_us_per_beat"] >= 0 and f["wal_bytes_per_beat"] > 0, name
        # A heartbeat rewrites its agent's row at most once (period 15 s > flush 10 s: about once).
        assert 0.8 <= f["row_versions_per_beat"] <= 1.05, (name, f["row_versions_per_beat"])
        assert 0 <= f["hot_share"] <= 1
        assert f["beat_p50_ms"] <= f["beat_p99_ms"] <= f["beat_max_ms"], name
        assert f["staleness_max_s"] > 0
    # A server round trip per heartbeat costs more server CPU than one COPY per write interval.
    assert s["direct"]["cpu_us_per_beat"] > s["buffered"]["cpu_us_per_beat"]
    # One UPDATE per heartbeat; batches and flushes issue far fewer statements.
    assert s["direct"]["statements_per_s"] == pytest.approx(s["direct"]["beats_per_s"], rel=0.01)
    assert s["app_batch"]["statements_per_s"] < s["direct"]["statements_per_s"] / 10
    for name in ("staged", "buffered"):
        assert s[name]["flushes"] == SECONDS / FLUSH
        assert s[name]["statements_per_s"] == pytest.approx(1 / FLUSH, rel=0.01)
        assert 0 < s[name]["flush_p50_ms"] <= s[name]["flush_max_ms"]
        # Staged beats wait for the next flush: older than direct's, whose beats land at once.
        assert s[name]["staleness_max_s"] > s["direct"]["staleness_max_s"]
    assert s["direct"]["flush_p50_ms"] is None and s["direct"]["flush_max_ms"] is None
    assert 0 < s["app_batch"]["flush_p50_ms"] <= s["app_batch"]["flush_max_ms"]


def test_bench_refuses_a_database_holding_other_agents(dsn: str) -> None:
    other = uuid.uuid4()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO public.workspace_agents (id) VALUES (%s)", (other,))
    result = run_pybatch("--dsn", dsn, "bench", "--agents", "10", "--seconds", "10s", "--compress", "10")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("pybatch: error")]
    assert len(errors) == 1 and "1 rows that are not bench agents" in errors[0], result.stderr
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM public.workspace_agents WHERE id = %s", (other,)).fetchone() == (1,)


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--strategies", "direct,nope"], "unknown strategy 'nope'"),
        (["--plot", "chart.jpg"], "must end in .png"),
        (["--period", "soon"], "--period: 'soon' is not a duration"),
    ],
)
def test_bad_flags_are_one_line_errors(dsn: str, flags: list[str], fragment: str) -> None:
    result = run_pybatch("--dsn", dsn, "bench", *flags)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], result.stderr


def test_client_overhead_figures(dsn: str) -> None:
    result = run_pybatch("--dsn", dsn, "bench", "--client", "--agents", "50", timeout=180)
    assert result.returncode == 0, result.stderr
    for measure in ("buffered beat(), writer idle", "buffered COPY into staging", "immediate beat()"):
        assert measure in result.stdout
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM pybatch.heartbeats").fetchone() == (0,)  # left staging empty
