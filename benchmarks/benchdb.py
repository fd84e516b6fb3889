"""A migrated database for a benchmark: --dsn if given, else a temporary local cluster
with default durability settings (benchmarks measure what a real server does)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from pybatch import db, migrate
from pybatch.local import temporary_cluster


@contextlib.contextmanager
def database(dsn: str | None) -> Iterator[str]:
    if dsn:
        yield dsn
        return
    with temporary_cluster(prefix="pybatch-bench-") as cluster:
        with db.connect(cluster.url()) as conn:
            migrate.apply(conn)
        yield cluster.url()
