"""Present a bench report: a terminal table, a JSON document, a PNG bar chart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pybatch.bench.fleet_run import BenchReport
from pybatch.errors import ConfigError

# Every figure under strategies.<name>, in table order: (key, column title, meaning).
FIGURES: tuple[tuple[str, str, str], ...] = (
    ("cpu_us_per_beat", "CPU µs/beat", "server CPU (all PostgreSQL processes, from the OS) per heartbeat, µs"),
    ("wal_bytes_per_beat", "WAL B/beat", "WAL bytes (pg_current_wal_lsn differences) per heartbeat"),
    ("row_versions_per_beat", "rows/beat", "row versions written to workspace_agents per heartbeat"),
    ("row_versions_per_s", "rows/s", "row versions written to workspace_agents per second"),
    ("hot_share", "HOT", "share of those row versions that were HOT updates (0..1)"),
    ("statements_per_s", "stmts/s", "statements against workspace_agents per second"),
    ("beat_p50_ms", "beat p50 ms", "heartbeat write latency (the beat call), median, ms"),
    ("beat_p99_ms", "beat p99 ms", "heartbeat write latency, 99th percentile, ms (flushes included)"),
    ("beat_max_ms", "beat max ms", "heartbeat write latency, maximum, ms"),
    ("flush_p50_ms", "flush p50 ms", "duration of a flush (app_batch: of a batch UPDATE), median, ms"),
    ("flush_max_ms", "flush max ms", "duration of a flush or batch UPDATE, maximum, ms"),
    ("staleness_max_s", "stale max s", "worst age of last_connected_at over live agents, s"),
)
EXTRA_FIGURES: tuple[tuple[str, str], ...] = (
    (
        "log_row_versions_per_beat",
        "row versions of pybatch.flush_log updated per heartbeat (each flush's passes and end)",
    ),
    ("beats", "heartbeats measured in the window"),
    ("window_s", "length of the measured window, s"),
    ("beats_per_s", "heartbeats per second achieved"),
    ("flushes", "flushes (app_batch: batch UPDATEs) in the window"),
    ("beat_lag_max_s", "how late the fleet sent a heartbeat at worst, s (a write path that cannot keep up)"),
    ("wal_vs_direct", "wal_bytes_per_beat as a multiple of direct's (one UPDATE per heartbeat)"),
    ("cpu_vs_direct", "cpu_us_per_beat as a multiple of direct's"),
    ("heap_bytes_loaded", "heap of workspace_agents right after the reset (freshly loaded), bytes"),
    ("index_bytes_loaded", "all its indexes right after the reset, bytes"),
    ("heap_bytes_before", "heap at the start of the measured window (after the warm-up), bytes"),
    ("heap_bytes_after", "heap at the end of the measured window, bytes"),
    ("heap_growth_pct", "heap growth over the measured window, %"),
    ("index_bytes_before", "all indexes at the start of the window, bytes"),
    ("index_bytes_after", "all indexes at the end of the window, bytes"),
    ("worst_index_growth_pct", "growth of the index that grew most over the window, %"),
    ("indexes", "each index: bytes before and after the window, growth %"),
    (
        "wal_records_per_beat",
        "the window's WAL by record type (pg_walinspect): records, bytes and full-page-image bytes per heartbeat;"
        " null when pg_walinspect is not installed (the bench installs it in its scratch database only)",
    ),
    (
        "update_records_per_beat",
        "heap UPDATE records (HOT or not) per heartbeat in the window's WAL that change workspace_agents or"
        " pybatch.flush_log (wal_records_per_beat counts the whole server's: autovacuum's too)",
    ),
)
DOCUMENTED_KEYS = {key: meaning for key, _, meaning in FIGURES} | dict(EXTRA_FIGURES)
# Which way is better, for the chart's panel titles: every figure costs, except the HOT share.
HIGHER_IS_BETTER = frozenset({"hot_share"})
NEITHER_IS_BETTER = frozenset({"row_versions_per_s"})  # follows the offered load


def panel_title(key: str, title: str) -> str:
    """A chart panel's title: the figure and which way is better."""
    if key in NEITHER_IS_BETTER:
        return title
    return f"{title} ({'higher' if key in HIGHER_IS_BETTER else 'lower'} is better)"


def draw_panel(ax: Any, names: list[str], values: list[float | None], key: str, title: str) -> None:
    """One panel: a bar per strategy that has the figure; a strategy without it (not measured)
    gets "n/a" at its place, never a bar of height zero, which would read as the best value."""
    colors = ["#999999", "#c98b4b", "#b5651d", "#5b8fc9", "#3a9d5d"]
    present = [(i, v) for i, v in enumerate(values) if v is not None]
    ax.bar([i for i, _ in present], [v for _, v in present], color=[colors[i % len(colors)] for i, _ in present])
    for i, value in enumerate(values):
        if value is None:
            ax.text(i, 0, "n/a", ha="center", va="bottom", fontsize=8, color="#666666")
    ax.set_xticks(range(len(names)), names)
    ax.set_title(panel_title(key, title), fontsize=9)
    if key == "statements_per_s" and present and all(v > 0 for _, v in present):
        ax.set_yscale("log")  # 667/s against 0.1/s: a linear axis hides the small ones
    ax.tick_params(axis="x", labelsize=8, rotation=20)


def as_json(report: BenchReport) -> dict[str, Any]:
    document = report.as_dict()
    document["figures"] = DOCUMENTED_KEYS
    return document


def write_json(report: BenchReport, path: Path) -> None:
    # Not sorted: strategies keep the order they ran in.
    path.write_text(json.dumps(as_json(report), indent=2) + "\n", encoding="utf-8")


def table_rows(report: BenchReport) -> list[dict[str, Any]]:
    rows = []
    for name, figures in report.strategies.items():
        row: dict[str, Any] = {"strategy": name}
        for key, title, _ in FIGURES:
            row[title] = _format(figures.get(key))
        rows.append(row)
    return rows


def headline_rows(report: BenchReport, names: tuple[str, ...]) -> list[dict[str, Any]]:
    """The demo's side-by-side headline: one row per figure, one column per strategy."""
    picked = [n for n in names if n in report.strategies]
    headline = (
        ("statements/s into workspace_agents", "statements_per_s"),
        ("row versions/s into workspace_agents", "row_versions_per_s"),
        ("WAL bytes per heartbeat", "wal_bytes_per_beat"),
        ("server CPU µs per heartbeat", "cpu_us_per_beat"),
        ("heartbeat p99 ms", "beat_p99_ms"),
    )
    return [{"": label, **{n: _format(report.strategies[n].get(key)) for n in picked}} for label, key in headline]


def ratio_rows(report: BenchReport) -> list[dict[str, Any]]:
    """Every strategy beside direct: WAL and CPU per heartbeat as multiples of direct's, HOT share."""
    return [
        {
            "strategy": name,
            "WAL B/beat": _format(f.get("wal_bytes_per_beat")),
            "WAL ÷ direct": _format(f.get("wal_vs_direct")),
            "CPU µs/beat": _format(f.get("cpu_us_per_beat")),
            "CPU ÷ direct": _format(f.get("cpu_vs_direct")),
            "HOT": _format(f.get("hot_share")),
            "stmts/s": _format(f.get("statements_per_s")),
        }
        for name, f in report.strategies.items()
    ]


def size_rows(report: BenchReport) -> list[dict[str, Any]]:
    """Heap and index sizes of workspace_agents: loaded, at the window's start and end, growth."""
    return [
        {
            "strategy": name,
            "heap kB loaded": _kb(f.get("heap_bytes_loaded")),
            "heap kB start": _kb(f.get("heap_bytes_before")),
            "heap kB end": _kb(f.get("heap_bytes_after")),
            "heap growth %": _format(f.get("heap_growth_pct")),
            "indexes kB start": _kb(f.get("index_bytes_before")),
            "indexes kB end": _kb(f.get("index_bytes_after")),
            "worst index growth %": _format(f.get("worst_index_growth_pct")),
        }
        for name, f in report.strategies.items()
    ]


def wal_record_rows(per_name: dict[str, dict[str, Any] | None], most: int = 8) -> list[dict[str, Any]]:
    """WAL bytes by record type, one row per record type (the largest first), one column
    per strategy or flush mode. Empty when no column has the breakdown."""
    columns = {name: records for name, records in per_name.items() if records}
    totals: dict[str, float] = {}
    for records in columns.values():
        for record, cost in records.items():
            totals[record] = totals.get(record, 0.0) + cost["bytes"]
    top = sorted(totals, key=totals.__getitem__, reverse=True)[:most]
    rows = [
        {"record": record, **{name: _format(records.get(record, {}).get("bytes")) for name, records in columns.items()}}
        for record in top
    ]
    if rows:
        rows.append(
            {
                "record": "(all)",
                **{name: _format(sum(c["bytes"] for c in records.values())) for name, records in columns.items()},
            }
        )
    return rows


def flush_rounds_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """`--flush-rounds`: one row per flush mode, its steady state."""
    rows = []
    for mode, m in result["modes"].items():
        g = m["steady_growth"]
        rows.append(
            {
                "mode": mode,
                "first ms": _format(m["first_round_ms"]),
                "steady median ms": _format(m["steady_median_ms"]),
                "steady max ms": _format(m["steady_max_ms"]),
                "passes": _format(m["steady_passes"]),
                "HOT": _format(m["steady_hot_share"]),
                "WAL B/row": _format(m["steady_wal_bytes_per_row"]),
                "heap growth %": _format(g["heap_growth_pct"]),
                "worst index growth %": _format(g["worst_index_growth_pct"]),
                "heap kB loaded": _kb(m["loaded"]["heap_bytes"]),
                "heap kB end": _kb(g["heap_bytes_after"]),
            }
        )
    return rows


def _kb(value: int | None) -> str:
    return "-" if value is None else f"{value / 1024:,.0f}"


def summary_lines(report: BenchReport) -> list[str]:
    m, t, p = report.machine, report.target_table, report.parameters
    lines = [
        f"{p['agents']} agents, period {p['period_s']:g}s, flush every {p['flush_interval_s']:g}s, "
        f"{p['seconds']:g}s measured per strategy after {p['warmup_s']:g}s warm-up; flushes by {p['flush_by']}",
        f"machine: {m['cores']} cores ({m.get('cpu_model') or 'unknown cpu'}), PostgreSQL {m['postgresql']}; "
        f"workspace_agents ({p.get('table', 'minimal')}): fillfactor {t['fillfactor']}, {t['indexes']} index(es), "
        f"{t.get('triggers', 0)} trigger(s), {t.get('foreign_keys', 0)} foreign key(s), "
        f"{t.get('avg_row_bytes') or '?'} B per row on average",
    ]
    if report.time_compression:
        lines.append(report.time_compression)
    if not m.get("server_cpu_measured"):
        lines.append("server CPU not measured: the server is not a process on this machine")
    return lines


def _format(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value == 0 or abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 1:
            return f"{value:.1f}"
        return f"{value:.3g}"
    return str(value)


def plot(report: BenchReport, path: Path) -> None:
    """A PNG bar chart, one panel per figure, one bar per strategy (matplotlib: the `plot` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("--plot needs matplotlib: pip install 'pybatch[plot]'") from None
    names = list(report.strategies)
    panels = [
        (key, title) for key, title, _ in FIGURES if any(report.strategies[n].get(key) is not None for n in names)
    ]
    columns = 4
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3 * rows), squeeze=False)
    for index, (key, title) in enumerate(panels):
        ax = axes[index // columns][index % columns]
        values = [report.strategies[n].get(key) for n in names]
        draw_panel(ax, names, [None if v is None else float(v) for v in values], key, title)
    for index in range(len(panels), rows * columns):
        axes[index // columns][index % columns].axis("off")
    fig.suptitle("pybatch bench: " + summary_lines(report)[0], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
