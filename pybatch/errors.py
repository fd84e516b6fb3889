"""The exception types pybatch raises. Every one derives from PybatchError."""

from __future__ import annotations


class PybatchError(Exception):
    """Base class of every error pybatch raises on purpose."""


class ConfigError(PybatchError, ValueError):
    """A setting, flag, DSN or argument has a bad value; the message names it."""


class InvalidDuration(ConfigError):
    """A duration string is not one of `500ms`, `10s`, `1m`, `2h`, `7d` or a plain number of seconds."""


class InvalidSetting(ConfigError):
    """A value for one of pybatch.settings is malformed or out of its range; names key and value."""

    def __init__(self, key: str, value: object, reason: str) -> None:
        super().__init__(f"{key}: {value!r} {reason}")
        self.key = key
        self.value = value


class DatabaseUnavailable(PybatchError):
    """The database could not be reached, or the connection dropped."""


class StandbyServer(PybatchError):
    """The server is a hot standby (read-only): a command that writes must point at the primary."""


class PermissionDenied(PybatchError):
    """The database role lacks a privilege pybatch needs."""


class NotMigrated(PybatchError):
    """The pybatch schema is missing or out of date: run `pybatch migrate`."""


class SchemaError(PybatchError):
    """public.workspace_agents cannot serve as the target (missing column, wrong type)."""


class UnsupportedServer(PybatchError):
    """The server is a PostgreSQL major pybatch does not support (pybatch.versions); the
    message names its version and the supported range."""

    def __init__(self, message: str, *, number: int, version: str) -> None:
        super().__init__(message)
        self.number = number  # server_version_num, e.g. 130023
        self.version = version  # as the server writes it, e.g. "13.23"


class MigrationError(PybatchError):
    """A migration failed to apply or roll back."""


class FlushFailed(PybatchError):
    """A flush failed; what it had not merged stays (in staging or pybatch.pending) for the next flush."""


class HeartbeatWriteError(PybatchError):
    """A heartbeat or disconnect could not be written."""


class ClientClosed(PybatchError):
    """The client was used after close()."""


class LocalClusterError(PybatchError):
    """The embedded local cluster could not be created, started or stopped."""


class CronError(PybatchError):
    """pg_cron is missing, not preloaded, not permitted, or cannot run the job."""


class UnknownRole(PybatchError):
    """A role named on the command line or in a call does not exist in the database."""


class InvalidHeartbeat(PybatchError, ValueError):
    """An argument of beat() or disconnect() is malformed; the message names the value."""


class InvalidAgentId(InvalidHeartbeat):
    """An agent id is None or not a UUID (a uuid.UUID or its string form)."""


class InvalidTimestamp(InvalidHeartbeat):
    """An at= is not a timezone-aware datetime, or lies beyond the future tolerance."""


class UnknownAgent(PybatchError, LookupError):
    """disconnect() named an agent that public.workspace_agents does not hold."""


class DependentObjects(PybatchError):
    """Objects outside pybatch depend on pybatch's (a view, a column of a pybatch type, ...):
    uninstall would drop them too, so it refuses unless forced. `objects` names each one."""

    def __init__(self, objects: list[str]) -> None:
        self.objects = tuple(objects)
        super().__init__(
            f"uninstall refused: {len(self.objects)} object(s) outside pybatch depend on it and would be dropped "
            f"with it: {', '.join(self.objects)}; drop or change them first, or pass --force to drop them too "
            "(nothing was removed)"
        )
