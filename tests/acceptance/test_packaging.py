"""`pip install .` ships migrations/ and sql/ inside the wheel, plus py.typed."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_wheel_contains_migrations_sql_and_py_typed(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path), str(REPO)],
        check=True, capture_output=True, text=True,
    )
    (wheel,) = tmp_path.glob("pybatch-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for migration in sorted((REPO / "migrations").glob("*.sql")):
        assert f"pybatch/migrations/{migration.name}" in names
    assert "pybatch/sql/schema.sql" in names
    assert "pybatch/py.typed" in names
    assert any(name.endswith("entry_points.txt") for name in names)
