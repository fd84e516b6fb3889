"""A small connector over psycopg: connect with pybatch's error translation."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import psycopg
from psycopg import errors as pg_errors

from pybatch.config import describe_dsn
from pybatch.errors import (
    ConfigError,
    DatabaseUnavailable,
    NotMigrated,
    PermissionDenied,
    PybatchError,
    SchemaError,
)

APPLICATION_NAME = "pybatch"


def connect(dsn: str, *, autocommit: bool = True, connect_timeout: int = 10) -> psycopg.Connection:
    """Open a connection; raise a pybatch error naming host:port/db (never the password)."""
    try:
        return psycopg.connect(
            dsn,
            autocommit=autocommit,
            connect_timeout=connect_timeout,
            application_name=APPLICATION_NAME,
        )
    except psycopg.ProgrammingError as exc:
        raise ConfigError(f"invalid connection string: {first_line(exc)}") from None
    except psycopg.Error as exc:
        raise translate(exc, f"cannot connect to {describe_dsn(dsn)}") from None


@contextlib.contextmanager
def translated(context: str) -> Iterator[None]:
    """Turn psycopg errors raised inside the block into pybatch errors."""
    try:
        yield
    except PybatchError:
        raise
    except psycopg.Error as exc:
        raise translate(exc, context) from exc


def translate(exc: psycopg.Error, context: str) -> PybatchError:
    """Map a psycopg error to the pybatch error a user can act on."""
    message = f"{context}: {first_line(exc)}"
    if isinstance(exc, pg_errors.InsufficientPrivilege):
        return PermissionDenied(message)
    if isinstance(exc, pg_errors.InvalidParameterValue):
        return ConfigError(message)
    if isinstance(exc, (pg_errors.InvalidSchemaName, pg_errors.UndefinedFunction, pg_errors.UndefinedTable)) and (
        "pybatch" in str(exc)
    ):
        return NotMigrated(f"{context}: pybatch is not installed in this database; run `pybatch migrate`")
    if isinstance(exc, (pg_errors.UndefinedColumn, pg_errors.DatatypeMismatch, pg_errors.UndefinedTable)):
        return SchemaError(message)
    if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
        return DatabaseUnavailable(message)
    return PybatchError(message)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
