"""benchmarks/scale.py as a subprocess, on a tiny fleet: it runs end to end (its own cluster,
Coder's table, the scheduler, the writers, pgbench for direct) and reports every figure. Never
for speed: the figures it prints are measured on a quiet machine (docs/scale.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import run_benchmark

# A tiny fleet, a short window, a small server: the script's whole path, quickly.
TINY = ["--search-seconds", "6", "--warmup", "17", "--shared-buffers", "128MB"]


def run_scale(tmp_path: Path, *args: str) -> tuple[str, dict[str, Any]]:
    """Run the script with `args` and TINY; its stdout and its JSON report."""
    out = tmp_path / "scale.json"
    stdout = run_benchmark("scale.py", *args, *TINY, "--json", str(out))
    return stdout, json.loads(out.read_text())


@pytest.mark.slow
def test_scale_benchmark_reports_both_strategies(tmp_path: Path) -> None:
    stdout, report = run_scale(tmp_path, "--search", "--start", "3000", "--direct-start", "3000", "--max", "3000")
    settings = report["settings"]
    assert settings["fsync"] == "on" and settings["shared_buffers"] == "128MB" and settings["flush_interval_s"] == 5.0
    runs = {run["strategy"]: run for run in report["runs"]}
    assert set(runs) == {"pybatch", "direct"}
    pybatch, direct = runs["pybatch"], runs["direct"]
    assert pybatch["agents"] == 3000 and pybatch["samples"], pybatch
    # Every agent beat and was merged in the warm-up: staleness is a number, not "never merged".
    assert all(sample["staleness"] is not None for sample in pybatch["samples"])
    assert pybatch["flushes"] >= 1 and pybatch["cpu_us_per_beat"] > 0 and pybatch["flush_peak_memory_mb"] > 0
    assert direct["rate_target"] == 200.0 and direct["rate_achieved"] > 0 and direct["cpu_us_per_beat"] > 0
    assert "pybatch: largest sustained" in stdout and "direct: largest sustained" in stdout


@pytest.mark.slow
def test_scale_benchmark_starts_warm_and_names_where_the_time_went(tmp_path: Path) -> None:
    stdout, report = run_scale(tmp_path, "--agents", "3000", "--warm-start", "--statements", "5")
    assert report["settings"]["warm_start"] is True
    run = report["long_run"]
    # Warm: every row had its connected width before the run, so the first flushes stay HOT.
    assert run["hot_share"] is not None and run["hot_share"] >= 0.95, run["hot_share"]
    statements = run["statements"]
    assert len(statements) == 5 and all(s["calls"] > 0 and s["total_s"] >= 0 for s in statements)
    # The flush's own steps are among them (nested statements are tracked).
    assert any("merge_pass_in" in s["query"] or "drain_into" in s["query"] for s in statements), statements
    assert "of a core" in stdout
