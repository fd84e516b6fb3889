"""benchmarks/flush_variants.py as a subprocess, on a tiny fleet: it applies each variant, flushes
every agent round by round and prints a median per variant. Never for speed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ROUTINE = "sql/routines/flush/drain_into.sql"


def test_two_variants_several_beats_per_agent_are_compared_round_by_round(tmp_path: Path) -> None:
    # The same routine twice, as two variants; three beats per agent, as after a flush fell behind.
    done = subprocess.run(
        [
            sys.executable,
            "benchmarks/flush_variants.py",
            "--agents",
            "300",
            "--rounds",
            "3",
            "--beats",
            "3",
            "--shared-buffers",
            "128MB",
            ROUTINE,
            f"{ROUTINE},{ROUTINE}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rounds = re.findall(r"^round (\d) (\S+): \d+ ms, CPU \d+ ms, (\d+) passes", done.stdout, re.MULTILINE)
    assert [(n, v) for n, v, _ in rounds] == [
        (str(n), v) for n in (1, 2, 3) for v in (ROUTINE, f"{ROUTINE},{ROUTINE}")
    ], done.stdout
    assert all(int(passes) >= 1 for _, _, passes in rounds)
    medians = re.findall(r"^(\S+): median \d+ ms, CPU \d+ ms over 1 rounds$", done.stdout, re.MULTILINE)
    assert medians == [ROUTINE, f"{ROUTINE},{ROUTINE}"], done.stdout
