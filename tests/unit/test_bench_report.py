"""Bench configuration, the figures of one strategy, and the report formats (no database)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pybatch.bench import report
from pybatch.bench.fleet_run import BenchConfig, BenchReport, add_ratios, compression_note, figures
from pybatch.bench.measure import TableCounters
from pybatch.bench.strategies import STRATEGY_NAMES, AppBatch, Direct, Staged, Strategy
from pybatch.errors import ConfigError

REQUIRED_KEYS = {
    "cpu_us_per_beat",
    "wal_bytes_per_beat",
    "row_versions_per_beat",
    "hot_share",
    "statements_per_s",
    "beat_p50_ms",
    "beat_p99_ms",
    "beat_max_ms",
    "flush_p50_ms",
    "flush_max_ms",
    "staleness_max_s",
}


def test_defaults_are_the_issue_s_reference_load() -> None:
    config = BenchConfig()
    assert (config.agents, config.period_s, config.flush_interval_s, config.seconds) == (10_000, 15, 5, 60)
    assert config.strategies == STRATEGY_NAMES
    assert "coder_batch" in STRATEGY_NAMES and STRATEGY_NAMES[0] == "direct"
    assert config.warmup == 25  # five flush intervals: the window is the steady state
    assert config.flushes_per_window == 12 and config.window_s == 60
    assert compression_note(config) is None


def test_warmup_covers_five_flushes_and_one_period() -> None:
    assert BenchConfig(flush_interval_s=10).warmup == 50  # five flushes
    assert BenchConfig(flush_interval_s=2, period_s=15).warmup == 17  # one period and one flush is longer
    assert BenchConfig(warmup_s=3).warmup == 3  # as asked


def test_coder_table_cannot_be_flushed_by_pg_cron() -> None:
    with pytest.raises(ConfigError, match="coder"):
        BenchConfig(table="coder", external_flush=True)
    assert BenchConfig(table="minimal", external_flush=True).as_dict()["table"] == "minimal"


def test_compression_divides_every_interval_and_says_so() -> None:
    config = BenchConfig(compress=10, flush_interval_s=10)
    timing = config.timing()
    assert timing.flush_interval_s == 1.0 and timing.app_batch_wait_s == 0.5 and timing.write_interval_s == 0.1
    assert timing.app_batch_size == 500  # sizes are not compressed
    note = compression_note(config)
    assert note is not None and "10x" in note and "15s runs as 1.5s" in note and "10s as 1s" in note


def test_window_is_whole_flush_intervals() -> None:
    assert BenchConfig(seconds=25, flush_interval_s=10).window_s == 30  # rounded up
    assert BenchConfig(seconds=150).flushes_per_window == 30
    assert BenchConfig(seconds=3, flush_interval_s=10).window_s == 10  # at least one
    assert BenchConfig(seconds=60, flush_interval_s=60).flushes_per_window == 1


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"agents": 0}, "agents"),
        ({"compress": 0.5}, "compress"),
        ({"strategies": ("direct", "nope")}, "'nope'"),
        ({"strategies": ()}, "strategies"),
        ({"fillfactor": 5}, "fillfactor"),
        ({"period_s": 0}, "period"),
        ({"workers": 0}, "workers"),
        ({"table": "nope"}, "'nope'"),
    ],
)
def test_bad_configuration_names_the_value(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        BenchConfig(**kwargs)  # type: ignore[arg-type]


def _sizes(heap: int, indexes: dict[str, int]) -> dict[str, Any]:
    return {"heap_bytes": heap, "index_bytes": indexes}


SIZES = {
    "loaded": _sizes(100_000, {"pkey": 40_000, "auth_token_idx": 40_000}),
    "start": _sizes(120_000, {"pkey": 40_000, "auth_token_idx": 40_000}),
    "end": _sizes(132_000, {"pkey": 40_000, "auth_token_idx": 50_000}),
}


def _figures(strategy: type[Strategy], beats: int = 1000, writes: int = 6) -> dict[str, object]:
    return figures(
        BenchConfig(compress=2),
        object.__new__(strategy),
        beats,
        latencies_s=[0.001] * 98 + [0.004, 0.010],
        max_lag_s=0.5,
        counters=TableCounters(wal_bytes=200_000, row_updates=800, hot_updates=600),
        cpu_s=0.05,
        write_durations_s=[0.02, 0.03, 0.10][:writes],
        batch_statements=writes,
        window_fleet_s=60.0,
        staleness_s=24.5,
        sizes=SIZES,
    )


def test_sizes_before_and_after_the_window_and_their_growth() -> None:
    fig = _figures(Staged)
    assert fig["heap_bytes_loaded"] == 100_000 and fig["index_bytes_loaded"] == 80_000
    assert fig["heap_bytes_before"] == 120_000 and fig["heap_bytes_after"] == 132_000
    assert fig["heap_growth_pct"] == 10.0  # over the window, not since loading
    assert fig["index_bytes_before"] == 80_000 and fig["index_bytes_after"] == 90_000
    assert fig["worst_index_growth_pct"] == 25.0
    assert fig["indexes"] == {
        "auth_token_idx": {"before": 40_000, "after": 50_000, "growth_pct": 25.0},
        "pkey": {"before": 40_000, "after": 40_000, "growth_pct": 0.0},
    }


def test_ratios_against_direct() -> None:
    strategies: dict[str, dict[str, Any]] = {
        "direct": {"wal_bytes_per_beat": 300.0, "cpu_us_per_beat": 200.0},
        "buffered": {"wal_bytes_per_beat": 150.0, "cpu_us_per_beat": 10.0},
        "no_cpu": {"wal_bytes_per_beat": 600.0, "cpu_us_per_beat": None},
    }
    add_ratios(strategies)
    assert strategies["direct"]["wal_vs_direct"] == 1.0 and strategies["direct"]["cpu_vs_direct"] == 1.0
    assert strategies["buffered"]["wal_vs_direct"] == 0.5 and strategies["buffered"]["cpu_vs_direct"] == 0.05
    assert strategies["no_cpu"]["wal_vs_direct"] == 2.0 and strategies["no_cpu"]["cpu_vs_direct"] is None


def test_figures_per_heartbeat_and_per_second() -> None:
    fig = _figures(Staged)
    assert set(fig) >= REQUIRED_KEYS
    assert fig["cpu_us_per_beat"] == 50.0
    assert fig["wal_bytes_per_beat"] == 200.0
    assert fig["row_versions_per_beat"] == 0.8 and fig["row_versions_per_s"] == pytest.approx(800 / 60, abs=0.01)
    assert fig["hot_share"] == 0.75
    assert fig["statements_per_s"] == 0.1  # six flushes in 60 s; staging INSERTs do not touch the target
    assert fig["beat_p50_ms"] == 1.0 and fig["beat_p99_ms"] == 4.0 and fig["beat_max_ms"] == 10.0
    assert fig["flush_p50_ms"] == 30.0 and fig["flush_max_ms"] == 100.0
    assert fig["staleness_max_s"] == 24.5
    assert fig["beat_lag_max_s"] == 1.0  # lag in fleet time: 0.5 s at 2x


def test_direct_counts_one_statement_per_heartbeat() -> None:
    fig = _figures(Direct, beats=600, writes=0)
    assert fig["statements_per_s"] == 10.0
    assert fig["flush_p50_ms"] is None and fig["flush_max_ms"] is None
    assert _figures(AppBatch, beats=600, writes=3)["statements_per_s"] == 0.05


def test_missing_cpu_and_no_updates_stay_null() -> None:
    fig = figures(
        BenchConfig(), Direct.__new__(Direct), 10, [0.001] * 10, 0.0, TableCounters(100, 0, 0), None, [], 0, 60.0, None
    )
    assert fig["cpu_us_per_beat"] is None and fig["hot_share"] is None and fig["staleness_max_s"] is None


def _report() -> BenchReport:
    result = BenchReport(
        parameters=BenchConfig(compress=4).as_dict(),
        machine={"cores": 2, "cpu_model": "test cpu", "postgresql": "15.0", "server_cpu_measured": True},
        target_table={"fillfactor": 70, "indexes": 1},
        time_compression=compression_note(BenchConfig(compress=4)),
    )
    result.strategies = {"direct": _figures(Direct, writes=0), "buffered": _figures(Staged)}
    add_ratios(result.strategies)
    return result


def test_json_has_every_figure_under_strategies_and_documents_the_keys(tmp_path: Path) -> None:
    path = tmp_path / "bench.json"
    report.write_json(_report(), path)
    document = json.loads(path.read_text())
    assert set(document["strategies"]) == {"direct", "buffered"}
    for name in ("direct", "buffered"):
        assert set(document["strategies"][name]) >= REQUIRED_KEYS
    assert set(document["figures"]) >= REQUIRED_KEYS
    assert document["parameters"]["agents"] == 10_000 and document["parameters"]["compress"] == 4
    assert document["machine"]["cores"] == 2 and "4x" in document["time_compression"]


def test_table_and_headline_rows() -> None:
    rows = report.table_rows(_report())
    assert [row["strategy"] for row in rows] == ["direct", "buffered"]
    assert rows[0]["flush p50 ms"] == "-" and rows[1]["flush p50 ms"] == "30.0"
    headline = report.headline_rows(_report(), ("direct", "buffered"))
    labels = [row[""] for row in headline]
    assert "statements/s into workspace_agents" in labels and "WAL bytes per heartbeat" in labels
    assert all(set(row) == {"", "direct", "buffered"} for row in headline)
    ratios = report.ratio_rows(_report())
    assert [row["strategy"] for row in ratios] == ["direct", "buffered"]
    assert all(row["WAL ÷ direct"] == "1.0" and row["CPU ÷ direct"] == "1.0" for row in ratios)  # same figures
    sizes = report.size_rows(_report())
    assert sizes[0]["heap growth %"] == "10.0" and sizes[0]["worst index growth %"] == "25.0"
    assert sizes[0]["heap kB loaded"] == "98" and sizes[0]["heap kB end"] == "129"
    summary = report.summary_lines(_report())
    assert any("2 cores" in line and "15.0" in line for line in summary)
    assert any("compressed 4x" in line for line in summary)


def test_plot_writes_a_png(tmp_path: Path) -> None:
    path = tmp_path / "bench.png"
    report.plot(_report(), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_wal_records_by_type_largest_first_with_a_total_per_column() -> None:
    per_beat = {
        "direct": {
            "Heap/HOT_UPDATE": {"records": 1.0, "bytes": 118.0, "fpi_bytes": 0.0},
            "Transaction/COMMIT": {"records": 1.0, "bytes": 34.0, "fpi_bytes": 0.0},
            "Heap2/PRUNE": {"records": 1.0, "bytes": 59.7, "fpi_bytes": 0.0},
        },
        "buffered": {
            "Heap/HOT_UPDATE": {"records": 1.0, "bytes": 110.3, "fpi_bytes": 0.0},
            "Heap2/PRUNE": {"records": 1.0, "bytes": 59.9, "fpi_bytes": 0.0},
        },
        "app_batch": None,  # pg_walinspect not there: no column
    }
    rows = report.wal_record_rows(per_beat, most=2)
    assert [r["record"] for r in rows] == ["Heap/HOT_UPDATE", "Heap2/PRUNE", "(all)"]
    assert list(rows[0]) == ["record", "direct", "buffered"]
    assert rows[0]["direct"] == "118" and rows[1]["buffered"] == "59.9"
    assert rows[2]["direct"] == "212" and rows[2]["buffered"] == "170"  # every record type, not only those shown
    assert report.wal_record_rows({"direct": None}) == []


def test_chart_panels_say_which_way_is_better_and_draw_no_zero_for_a_missing_value() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    assert report.panel_title("wal_bytes_per_beat", "WAL B/beat") == "WAL B/beat (lower is better)"
    assert report.panel_title("hot_share", "HOT") == "HOT (higher is better)"
    fig, ax = plt.subplots()
    try:
        report.draw_panel(ax, ["direct", "app_batch", "buffered"], [135.0, None, 20.4], "cpu_us_per_beat", "CPU")
        heights = sorted(bar.get_height() for bar in ax.patches if isinstance(bar, Rectangle))
        assert heights == [20.4, 135.0]  # two bars: the missing figure is not a bar of 0
        assert [t.get_text() for t in ax.texts] == ["n/a"] and ax.texts[0].get_position()[0] == 1
        assert [t.get_text() for t in ax.get_xticklabels()] == ["direct", "app_batch", "buffered"]
        assert "lower is better" in ax.get_title()
    finally:
        plt.close(fig)
