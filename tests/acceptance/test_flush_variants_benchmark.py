"""benchmarks/flush_variants.py as a subprocess, on a tiny fleet: it applies each variant, flushes
every agent round by round and prints a median per variant. Never for speed."""

from __future__ import annotations

import re

from tests.helpers import run_benchmark

ROUTINE = "sql/routines/flush/drain_into.sql"
TWICE = f"{ROUTINE},{ROUTINE}"


def test_two_variants_several_beats_per_agent_are_compared_round_by_round() -> None:
    # The same routine twice, as two variants; three beats per agent, as after a flush fell behind.
    stdout = run_benchmark(
        "flush_variants.py", "--agents", "300", "--rounds", "3", "--beats", "3", "--shared-buffers", "128MB",
        ROUTINE, TWICE,
    )  # fmt: skip
    rounds = re.findall(r"^round (\d) (\S+): \d+ ms, CPU \d+ ms, (\d+) passes", stdout, re.MULTILINE)
    assert [(n, v) for n, v, _ in rounds] == [(str(n), v) for n in (1, 2, 3) for v in (ROUTINE, TWICE)], stdout
    assert all(int(passes) >= 1 for _, _, passes in rounds)
    medians = re.findall(r"^(\S+): median \d+ ms, CPU \d+ ms over 1 rounds$", stdout, re.MULTILINE)
    assert medians == [ROUTINE, TWICE], stdout
