"""pybatch: PostgreSQL-side heartbeat batching.

Heartbeats go into the UNLOGGED staging table pybatch.heartbeats; pybatch.flush()
merges the latest per agent into public.workspace_agents; disconnects bypass staging.
"""

from __future__ import annotations

from pybatch.errors import (
    ClientClosed,
    ConfigError,
    CronError,
    DatabaseUnavailable,
    FlushFailed,
    HeartbeatWriteError,
    InvalidDuration,
    LocalClusterError,
    MigrationError,
    NotMigrated,
    PermissionDenied,
    PybatchError,
    SchemaError,
)

__version__ = "0.1.0"

__all__ = [
    "ClientClosed",
    "ConfigError",
    "CronError",
    "DatabaseUnavailable",
    "FlushFailed",
    "HeartbeatWriteError",
    "InvalidDuration",
    "LocalClusterError",
    "MigrationError",
    "NotMigrated",
    "PermissionDenied",
    "PybatchError",
    "SchemaError",
    "__version__",
]
