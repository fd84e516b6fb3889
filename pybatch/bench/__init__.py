"""`pybatch bench`: the four ways of writing heartbeats, measured the same way on one server.

run_bench(dsn, BenchConfig(...)) returns a BenchReport; pybatch.bench.report prints it,
writes it as JSON and plots it.
"""

from __future__ import annotations

from pybatch.bench.fleet_run import BenchConfig, BenchReport, run_bench
from pybatch.bench.strategies import STRATEGY_NAMES

__all__ = ["STRATEGY_NAMES", "BenchConfig", "BenchReport", "run_bench"]
