"""Bench pieces that need no database: table choice, growth arithmetic, Coder's batch
arrays, the flush-rounds summary and its modes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pybatch.bench import flush_rounds
from pybatch.bench.flush_rounds import FlushRound, check_modes, summarise
from pybatch.bench.strategies import NIL_UUID, ZERO_TIME, coder_batch_params
from pybatch.bench.target import TABLES, _scratch_name, check_table, growth
from pybatch.errors import ConfigError


def test_tables_and_bad_names() -> None:
    assert TABLES == ("coder", "minimal")
    assert check_table("coder") == "coder"
    with pytest.raises(ConfigError, match="'nope'"):
        check_table("nope")


def test_scratch_name_fits_postgres_63_bytes() -> None:
    assert _scratch_name("pybatch") == "pybatch_bench_coder"
    assert len(_scratch_name("x" * 63)) == 63 and _scratch_name("x" * 63).endswith("_bench_coder")


def test_growth_per_index_and_worst() -> None:
    before = {"heap_bytes": 8192 * 10, "index_bytes": {"a": 8192, "b": 8192 * 4}}
    after = {"heap_bytes": 8192 * 11, "index_bytes": {"a": 8192 * 2, "b": 8192 * 4}}
    g = growth(before, after)
    assert g["heap_growth_pct"] == 10.0
    assert g["indexes"]["a"]["growth_pct"] == 100.0 and g["indexes"]["b"]["growth_pct"] == 0.0
    assert g["worst_index_growth_pct"] == 100.0
    assert g["index_bytes_before"] == 8192 * 5 and g["index_bytes_after"] == 8192 * 6
    empty = growth({"heap_bytes": 0, "index_bytes": {}}, {"heap_bytes": 0, "index_bytes": {}})
    assert empty["heap_growth_pct"] is None and empty["worst_index_growth_pct"] is None


def test_coder_batch_sends_zero_values_and_remembers_first_connection() -> None:
    agent, other = uuid.uuid4(), uuid.uuid4()
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    first_seen: dict[uuid.UUID, datetime] = {}
    params = coder_batch_params([(agent, (t0, None)), (other, (t0, uuid.UUID(int=7)))], first_seen)
    assert params["replica_ids"] == [NIL_UUID, uuid.UUID(int=7)]  # NULL travels as the nil uuid
    assert params["disconnected_ats"] == [ZERO_TIME, ZERO_TIME]  # never disconnected: year 1
    later = t0 + timedelta(seconds=15)
    params = coder_batch_params([(agent, (later, None))], first_seen)
    assert params["first_ats"] == [t0] and params["last_ats"] == [later] and params["updated_ats"] == [later]


def _round(number: int, ms: float, hot: float, wal: float, rows: int = 1000) -> FlushRound:
    return FlushRound(
        round=number,
        agents_updated=rows,
        duration_ms=ms,
        wall_ms=ms + 1,
        passes=40,
        hot_share=hot,
        wal_bytes_per_row=wal,
        heap_bytes=0,
        index_bytes=0,
    )


def _size(heap: int, index: int) -> dict[str, Any]:
    return {"heap_bytes": heap, "index_bytes": {"pkey": index}}


def test_summary_measures_the_rounds_after_the_warm_up() -> None:
    assert flush_rounds.STEADY_AFTER == 5
    rounds = [_round(n, 900.0, 0.1, 500.0) for n in range(1, 6)]  # warm-up: slow, non-HOT
    rounds += [_round(n, ms, 1.0, 150.0) for n, ms in ((6, 100.0), (7, 300.0), (8, 200.0))]
    sizes = {n: _size(1000 + 100 * min(n, 5), 500) for n in range(0, 9)}
    sizes[8] = _size(1550, 600)
    s = summarise(rounds, sizes)
    assert s["steady_rounds"] == 3 and s["first_round_ms"] == 900.0
    assert s["steady_median_ms"] == 200.0 and s["steady_max_ms"] == 300.0
    assert s["steady_hot_share"] == 1.0 and s["steady_wal_bytes_per_row"] == 150.0
    assert s["steady_growth"]["heap_bytes_before"] == 1500
    assert s["steady_growth"]["heap_growth_pct"] == pytest.approx(3.33)
    assert s["steady_growth"]["worst_index_growth_pct"] == 20.0
    assert s["loaded"] == {"heap_bytes": 1000, "index_bytes": 500}
    assert len(s["rounds"]) == 8


def test_summary_of_a_short_run_uses_every_round() -> None:
    s = summarise(
        [_round(1, 50.0, 0.5, 300.0), _round(2, 70.0, 1.0, 100.0)], {0: _size(10, 1), 1: _size(10, 1), 2: _size(20, 1)}
    )
    assert s["steady_rounds"] == 2 and s["steady_hot_share"] == 0.75 and s["steady_wal_bytes_per_row"] == 200.0
    assert s["steady_growth"]["heap_growth_pct"] == 100.0


def test_flush_modes() -> None:
    assert check_modes(["passes", "single"]) == ("passes", "single")
    with pytest.raises(ConfigError, match="'both'"):
        check_modes(["both"])
    with pytest.raises(ConfigError, match="at least one"):
        check_modes([])
