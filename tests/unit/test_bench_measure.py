"""Measurement helpers without a database: percentiles, LSNs, and the CPU accounting of a
process tree (this test process stands in for the postmaster)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import psutil
import pytest

from pybatch.bench.measure import ServerCpu, TableCounters, format_lsn, parse_lsn, percentile
from pybatch.bench.strategies import Flusher, TimedWrite

BURN = "import time\nend = time.process_time() + {seconds}\nwhile time.process_time() < end: pass\n"


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.50) == 50
    assert percentile(values, 0.99) == 99
    assert percentile(values, 1.0) == 100
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([], 0.5) is None
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0  # unsorted input


def test_parse_lsn() -> None:
    assert parse_lsn("0/0") == 0
    assert parse_lsn("0/16B3740") == 0x16B3740
    assert parse_lsn("16/B374D848") == (0x16 << 32) + 0xB374D848
    assert parse_lsn("1/0") - parse_lsn("0/FFFFFFFF") == 1


def test_format_lsn_is_the_inverse_of_parse_lsn() -> None:
    for text in ("0/0", "0/16B3740", "16/B374D848", "1/0", "0/FFFFFFFF"):
        assert format_lsn(parse_lsn(text)) == text


def test_counter_difference() -> None:
    later, earlier = TableCounters(1000, 50, 40), TableCounters(400, 10, 5)
    assert later.minus(earlier) == TableCounters(600, 40, 35)


def test_cpu_of_a_child_that_exited_between_samples_is_counted() -> None:
    cpu = ServerCpu(psutil.Process())
    before = cpu.total_seconds()
    subprocess.run([sys.executable, "-c", BURN.format(seconds=0.4)], check=True)  # started, burnt, reaped
    after = cpu.total_seconds()
    assert after - before >= 0.35


def test_cpu_of_a_living_child_is_counted_unless_excluded() -> None:
    child = subprocess.Popen([sys.executable, "-c", BURN.format(seconds=30)])
    try:
        myself = psutil.Process()
        excluding = ServerCpu(myself, excluded_pids=[child.pid])
        including = ServerCpu(myself)
        burning = psutil.Process(child.pid)

        def burnt() -> float:
            times = burning.cpu_times()
            return float(times.user + times.system)

        def own() -> float:
            times = myself.cpu_times()
            return float(times.user + times.system + times.children_user + times.children_system)

        own_before = own()
        first_in, first_ex, first_child = including.total_seconds(), excluding.total_seconds(), burnt()
        # Wait until the child has burnt 0.3 s of CPU, however long a loaded machine takes to give
        # it that (a fixed 0.5 s of wall time gave it 0.07 s once).
        deadline = time.monotonic() + 60
        while (child_grown := burnt() - first_child) < 0.3:
            assert time.monotonic() < deadline, "the child got no CPU for a minute"
            time.sleep(0.05)
        grown_in = including.total_seconds() - first_in
        grown_ex = excluding.total_seconds() - first_ex
        own_grown = own() - own_before
        # Both totals also hold this test process's own time, read a moment apart: bound it by the
        # own time over the span enclosing both windows (same /proc counters, so no tick slack).
        # A fixed 0.28 s margin failed once, by 20 ms of the test's own polling.
        epsilon = 1e-6
        assert grown_in >= child_grown - epsilon
        assert grown_ex <= own_grown + epsilon
        assert grown_in - grown_ex >= child_grown - own_grown - epsilon
        assert excluding.excluded_seconds() > 0
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize("fraction", [0.0, 0.001])
def test_percentile_of_tiny_fractions_is_the_minimum(fraction: float) -> None:
    assert percentile([5.0, 3.0, 9.0], fraction) == 3.0


class _CountingFlusher(Flusher):
    """A flusher whose 'flush' only records itself: the hold logic of Flusher, no database."""

    def __init__(self) -> None:
        super().__init__()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self, load_started: float) -> None:
        self._thread.start()

    def _run(self) -> None:
        while self._wait_while_held():
            self._record(TimedWrite(time.monotonic(), 0.0, 1))
            time.sleep(0.001)

    def stop(self) -> None:
        self._stop_holding()
        self._thread.join()


def test_a_held_flusher_starts_no_flush_after_the_held_one() -> None:
    flusher = _CountingFlusher()
    flusher.hold_after(3)
    flusher.start(time.monotonic())
    try:
        flusher.wait_completed(3, timeout=10)
        # Held: whatever the main thread does now (read a window's end), no 4th flush starts.
        deadline = time.monotonic() + 0.2
        while time.monotonic() < deadline:
            assert flusher.completed == 3
            time.sleep(0.01)
        flusher.hold_after(5)
        flusher.wait_completed(5, timeout=10)
        assert flusher.completed == 5
        flusher.hold_after(None)
        flusher.wait_completed(8, timeout=10)
    finally:
        flusher.stop()
