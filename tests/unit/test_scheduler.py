"""Pure-Python parts of the scheduler: metrics bookkeeping and the catch-up rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pybatch.flush import FlushResult
from pybatch.schedule.scheduler import Scheduler, SchedulerMetrics


def _result(*, rows: int = 5, error: str | None = None, skipped: bool = False) -> FlushResult:
    return FlushResult(
        1, datetime(2026, 1, 1, tzinfo=UTC), skipped, rows, rows, 0, 0, 0, timedelta(milliseconds=20), error
    )


def _value(metrics: SchedulerMetrics, name: str, labels: dict[str, str] | None = None) -> float:
    value = metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


def test_metrics_count_rows_and_outcomes() -> None:
    metrics = SchedulerMetrics()
    metrics.record(_result(rows=5))
    metrics.record(_result(rows=7))
    metrics.record(_result(rows=0, error="XX000: boom"))
    metrics.record(_result(rows=0, skipped=True))
    assert _value(metrics, "pybatch_rows_merged_total") == 12
    assert _value(metrics, "pybatch_flushes_total", {"outcome": "ok"}) == 2
    assert _value(metrics, "pybatch_flushes_total", {"outcome": "failed"}) == 1
    assert _value(metrics, "pybatch_flushes_total", {"outcome": "skipped"}) == 1
    assert _value(metrics, "pybatch_errors_total", {"kind": "flush"}) == 1
    assert _value(metrics, "pybatch_flush_duration_seconds_count") == 4
    assert _value(metrics, "pybatch_last_success_timestamp_seconds") > 0


def test_a_capped_drain_flushes_again_at_once() -> None:
    scheduler = Scheduler("dbname=unused", interval=10)
    scheduler._row_cap = 5
    assert scheduler._capped(_result(rows=5))
    assert not scheduler._capped(_result(rows=4))
    assert not scheduler._capped(_result(rows=5, error="XX000: boom"))
    scheduler._row_cap = None
    assert not scheduler._capped(_result(rows=5))
