"""pybatch: PostgreSQL-side heartbeat batching.

Heartbeats go into the UNLOGGED staging table pybatch.heartbeats; pybatch.flush()
merges the latest per agent into public.workspace_agents; disconnects bypass staging.
"""

from __future__ import annotations

from pybatch._core import ClientStats
from pybatch.aio import AsyncHeartbeatClient
from pybatch.client import HeartbeatClient
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
    UnknownAgent,
    UnsupportedServer,
)

__version__ = "0.1.0"

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
    "UnknownAgent",
    "UnsupportedServer",
    "__version__",
]
