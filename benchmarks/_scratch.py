"""A migrated database for a benchmark: --dsn if given, else a temporary local cluster."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pybatch import migrate
from pybatch.local import LocalCluster


@contextlib.contextmanager
def database(dsn: str | None) -> Iterator[str]:
    if dsn:
        yield dsn
        return
    home = Path(tempfile.mkdtemp(prefix="pybatch-bench-", dir=os.environ.get("PYBATCH_TEST_TMP", "/tmp")))
    os.chmod(home, 0o755)
    cluster = LocalCluster(home / "cluster")
    try:
        cluster.start()
        migrate.apply(cluster.url())
        yield cluster.url()
    finally:
        cluster.destroy()
        with contextlib.suppress(OSError):
            home.rmdir()
