"""The client install needs only the core dependencies: rich, psutil and prometheus-client
are extras ([cli], [bench], [metrics]), imported only by the CLI, the bench and the flush loop."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
EXTRAS_ONLY = ("rich", "psutil", "prometheus_client")

# Runs in a fresh interpreter where importing any EXTRAS_ONLY module fails, as in an install
# without the extras; then uses the library the way an application does.
LIBRARY_WITHOUT_EXTRAS = f"""
import sys

BLOCKED = {EXTRAS_ONLY!r}


class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"No module named {{name!r}} (blocked: not a core dependency)")
        return None


sys.meta_path.insert(0, NotInstalled())

import pybatch
from pybatch import AsyncHeartbeatClient, DatabaseUnavailable, HeartbeatClient
import pybatch.doctor, pybatch.flush, pybatch.grants, pybatch.status, pybatch.migrate
import pybatch.schedule.cron, pybatch.uninstall

client = HeartbeatClient("host=/nonexistent-pybatch-socket-dir port=1", connect_timeout="2s")
try:
    client.beat("00000000-0000-0000-0000-000000000001")
except DatabaseUnavailable:
    pass
else:
    raise SystemExit("beat() to a missing server did not fail")
client.close()
AsyncHeartbeatClient("host=/nonexistent-pybatch-socket-dir port=1")
loaded = sorted(name for name in sys.modules if name.split(".")[0] in BLOCKED)
assert not loaded, loaded
print("ok")
"""


def test_library_works_without_the_extras() -> None:
    result = subprocess.run(
        [sys.executable, "-c", LIBRARY_WITHOUT_EXTRAS], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_the_blocker_really_blocks() -> None:
    """The check above would pass vacuously if the blocker let the extras through."""
    probe = LIBRARY_WITHOUT_EXTRAS.split("import pybatch\n")[0] + "import psutil\n"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    assert result.returncode != 0 and "blocked: not a core dependency" in result.stderr


def test_core_dependencies_are_the_client_and_migrations_only() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {Requirement(r).name for r in project["dependencies"]}
    assert core == {"psycopg", "psycopg-pool", "yoyo-migrations"}
    extras = {name: {Requirement(r).name for r in reqs} for name, reqs in project["optional-dependencies"].items()}
    assert extras["cli"] >= {"rich", "psutil", "prometheus-client"}
    assert "psutil" in extras["bench"]
    assert "prometheus-client" in extras["metrics"]
