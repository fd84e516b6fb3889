"""pybatch: PostgreSQL-side heartbeat batching.

Heartbeats go into the UNLOGGED staging table pybatch.heartbeats; pybatch.flush()
merges the latest per agent into public.workspace_agents; disconnects bypass staging.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pybatch.errors import (
    ClientClosed,
    ConfigError,
    CronError,
    DatabaseUnavailable,
    FlushFailed,
    HeartbeatWriteError,
    InvalidAgentId,
    InvalidDuration,
    InvalidHeartbeat,
    InvalidTimestamp,
    LocalClusterError,
    MigrationError,
    NotMigrated,
    PermissionDenied,
    PybatchError,
    SchemaError,
    StandbyServer,
    UnknownAgent,
    UnsupportedServer,
)

__version__ = "0.1.0"

if TYPE_CHECKING:
    from pybatch._core import ClientStats
    from pybatch.aio import AsyncHeartbeatClient
    from pybatch.client import HeartbeatClient

# The clients import psycopg: loaded on first use, so `import pybatch.errors` (and the CLI's
# start) stays light. `from pybatch import HeartbeatClient` works as ever.
_LAZY = {
    "ClientStats": "pybatch._core",
    "AsyncHeartbeatClient": "pybatch.aio",
    "HeartbeatClient": "pybatch.client",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pybatch' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "AsyncHeartbeatClient",
    "ClientClosed",
    "ClientStats",
    "ConfigError",
    "CronError",
    "DatabaseUnavailable",
    "FlushFailed",
    "HeartbeatClient",
    "HeartbeatWriteError",
    "InvalidAgentId",
    "InvalidDuration",
    "InvalidHeartbeat",
    "InvalidTimestamp",
    "LocalClusterError",
    "MigrationError",
    "NotMigrated",
    "PermissionDenied",
    "PybatchError",
    "SchemaError",
    "StandbyServer",
    "UnknownAgent",
    "UnsupportedServer",
    "__version__",
]
