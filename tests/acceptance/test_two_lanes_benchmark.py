"""benchmarks/two_lanes.py as a subprocess, on a tiny fleet: every mode flushes every staged
agent, round by round, and a median per mode is printed. Never for speed."""

from __future__ import annotations

import re

from tests.helpers import run_benchmark

MODES = ("one-lane", "two-lanes")


def test_every_mode_flushes_every_staged_agent_round_by_round() -> None:
    stdout = run_benchmark(
        "two_lanes.py", "--agents", "400", "--share", "0.5", "--rounds", "3", "--shared-buffers", "128MB"
    )
    rounds = re.findall(r"^round (\d) (\S+): \d+ ms, CPU \d+ ms, (\d+) passes, HOT ([\d.]+)$", stdout, re.MULTILINE)
    assert [(n, m) for n, m, _, _ in rounds] == [(str(n), m) for n in (1, 2, 3) for m in MODES], stdout
    for _, mode, passes, hot in rounds:
        assert int(passes) >= 1 and 0 <= float(hot) <= 1, (mode, passes, hot)
    medians = re.findall(r"^(\S+): median \d+ ms, CPU \d+ ms over 1 rounds$", stdout, re.MULTILINE)
    assert medians == list(MODES), stdout
