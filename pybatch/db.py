"""A small connector over psycopg: connect with pybatch's error translation."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import fields

import psycopg
import psycopg.conninfo
from psycopg import errors as pg_errors
from psycopg import sql

from pybatch.config import describe_dsn
from pybatch.errors import (
    ConfigError,
    DatabaseUnavailable,
    NotMigrated,
    PermissionDenied,
    PybatchError,
    SchemaError,
    StandbyServer,
)

APPLICATION_NAME = "pybatch"
# Every session pybatch opens talks UTF8, whatever the database's encoding: in a SQL_ASCII
# database (what initdb gives under the POSIX locale) psycopg would otherwise return text as
# bytes, and in a LATIN1 one a name outside Latin-1 could not be sent.
CLIENT_ENCODING = "UTF8"


def connect(
    dsn: str, *, autocommit: bool = True, connect_timeout: int = 10, application_name: str = APPLICATION_NAME
) -> psycopg.Connection:
    """Open a connection; raise a pybatch error naming host:port/db (never the password)."""
    try:
        return psycopg.connect(
            dsn,
            autocommit=autocommit,
            connect_timeout=connect_timeout,
            application_name=application_name,
            prepare_threshold=None,  # no server-side prepared statements: a pooler may sit between
            client_encoding=CLIENT_ENCODING,
        )
    except psycopg.ProgrammingError as exc:
        raise ConfigError(f"invalid connection string: {first_line(exc)}") from None
    except psycopg.Error as exc:
        raise translate(exc, f"cannot connect to {describe_dsn(dsn)}") from None


# -- a second session like the caller's ----------------------------------------------------
# Library operations take the caller's connection. The few that truly need another session
# (yoyo's backend, which builds its own connection from a URI; pg_cron's database when
# cron.database_name is not the app's) derive it here, and only here, from that connection.


def params_like(
    conn: psycopg.Connection, *, dbname: str | None = None, application_name: str = APPLICATION_NAME
) -> dict[str, str]:
    """The libpq parameters of a session like `conn`: same server, role, password and options,
    in `dbname` (default: conn's own database), under `application_name`."""
    params = conn.info.get_parameters()  # every non-default parameter, from the DSN or PG* variables
    password = conn.info.password
    if password:
        params["password"] = password
    params["dbname"] = dbname or conn.info.dbname
    params["application_name"] = application_name
    params["client_encoding"] = CLIENT_ENCODING
    return params


def connect_like(
    conn: psycopg.Connection, *, dbname: str | None = None, application_name: str = APPLICATION_NAME
) -> psycopg.Connection:
    """An autocommit session like `conn` (see params_like); the caller closes it."""
    params = params_like(conn, dbname=dbname, application_name=application_name)
    return connect(psycopg.conninfo.make_conninfo(**params), application_name=application_name)


def describe(conn: psycopg.Connection) -> str:
    """host:port/dbname of a connection, for messages (never the password)."""
    return f"{conn.info.host}:{conn.info.port}/{conn.info.dbname}"


def require_autocommit(conn: psycopg.Connection, operation: str) -> None:
    """ConfigError unless `conn` is in autocommit mode with no transaction open: operations that
    take the caller's connection run their own short transactions on it and leave it idle."""
    if not conn.autocommit or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise ConfigError(
            f"{operation} needs an autocommit connection with no transaction open "
            "(psycopg.connect(..., autocommit=True), outside `with conn.transaction()`)"
        )
    require_text_encoding(conn, operation)


def require_text_encoding(conn: psycopg.Connection, operation: str) -> None:
    """ConfigError when `conn` has client_encoding SQL_ASCII: psycopg then returns text as bytes.
    pybatch's own sessions always set UTF8; a caller's connection must too (it is not changed here)."""
    encoding = conn.info.parameter_status("client_encoding")
    if encoding is not None and encoding.upper() == "SQL_ASCII":
        raise ConfigError(
            f"{operation} needs a connection whose client_encoding is not SQL_ASCII (psycopg returns text as "
            f"bytes there; database {conn.info.dbname} is SQL_ASCII): connect with "
            "psycopg.connect(..., client_encoding='UTF8')"
        )


STANDBY_MESSAGE = "this server is a standby (read-only): point at the primary"


def in_recovery(conn: psycopg.Connection) -> bool:
    """True on a hot standby (pg_is_in_recovery())."""
    with translated("cannot ask the server whether it is a standby"):
        row = conn.execute("SELECT pg_catalog.pg_is_in_recovery()", prepare=False).fetchone()
    return bool(row and row[0])


def through_pooler(conn: psycopg.Connection) -> bool:
    """True when a connection pooler (pgbouncer, ...) sits between: the backend pid the server
    reports differs from the one the connection was given at start-up (a pooler hands out its own)."""
    with translated("cannot read the server's backend pid"):
        row = conn.execute("SELECT pg_catalog.pg_backend_pid()", prepare=False).fetchone()
    return row is not None and row[0] != conn.info.backend_pid


def require_primary(conn: psycopg.Connection, operation: str) -> None:
    """StandbyServer when `conn` is on a hot standby, before `operation` tries to write there."""
    if in_recovery(conn):
        raise StandbyServer(f"{operation}: {STANDBY_MESSAGE} ({describe(conn)})")


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


def columns(row_type: type) -> sql.Composable:
    """A dataclass's fields as a column list (for a class_row read): a view or table that gains
    columns later breaks nothing."""
    return sql.SQL(", ").join(sql.Identifier(f.name) for f in fields(row_type))
