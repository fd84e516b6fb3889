"""`pip install .` ships migrations/ and sql/ inside the wheel, plus py.typed; the distribution
is `pybatch-pg` (PyPI's `pybatch` is an unrelated project), the import package and command `pybatch`."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_wheel_contains_migrations_sql_and_py_typed(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    (wheel,) = tmp_path.glob("pybatch_pg-*.whl")
    archive = zipfile.ZipFile(wheel)
    names = set(archive.namelist())
    for migration in sorted((REPO / "migrations").glob("*.sql")):
        assert f"pybatch/migrations/{migration.name}" in names
    for source in sorted((REPO / "sql").rglob("*.sql")):
        assert f"pybatch/sql/{source.relative_to(REPO / 'sql').as_posix()}" in names
    assert "pybatch/py.typed" in names
    (entry_points,) = (name for name in names if name.endswith(".dist-info/entry_points.txt"))
    assert "pybatch = pybatch.cli:entrypoint" in archive.read(entry_points).decode()
    (metadata,) = (name for name in names if name.endswith(".dist-info/METADATA"))
    assert "\nName: pybatch-pg\n" in archive.read(metadata).decode()
