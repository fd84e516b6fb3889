"""Where the database comes from, in libpq's order: the `dsn` argument (`--dsn` on the
command line), then PYBATCH_DSN, then libpq's PG* variables.

The library stops there and raises ConfigError: it never starts a server. Only the CLI
falls back to the embedded local cluster (pybatch.cli.common.resolve_cli_dsn)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import psycopg.conninfo

from pybatch.errors import ConfigError

# libpq variables that, when set, mean "a database is configured".
PG_ENV_VARS = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE")

NO_DATABASE = "no database given: pass dsn=, set PYBATCH_DSN or PG* variables"


@dataclass(frozen=True)
class ResolvedDsn:
    dsn: str
    source: str  # the origin of a given dsn ("dsn" or "--dsn"), "PYBATCH_DSN", "PG* variables" or "embedded"


def configured_dsn(
    dsn: str | None = None,
    *,
    origin: str = "dsn",
    environ: Mapping[str, str] | None = None,
) -> ResolvedDsn | None:
    """The configured DSN (`dsn`, PYBATCH_DSN, then PG* as an empty conninfo libpq completes),
    or None when nothing names a database. `origin` names `dsn` in errors and in `source`."""
    env = os.environ if environ is None else environ
    if dsn:
        return ResolvedDsn(validate_dsn(dsn, origin), origin)
    if env.get("PYBATCH_DSN"):
        return ResolvedDsn(validate_dsn(env["PYBATCH_DSN"], "PYBATCH_DSN"), "PYBATCH_DSN")
    if any(env.get(name) for name in PG_ENV_VARS):
        return ResolvedDsn("", "PG* variables")
    return None


def resolve_dsn(dsn: str | None = None, *, environ: Mapping[str, str] | None = None) -> ResolvedDsn:
    """The DSN the library connects to; ConfigError when nothing names a database."""
    found = configured_dsn(dsn, environ=environ)
    if found is None:
        raise ConfigError(NO_DATABASE)
    return found


def validate_dsn(dsn: str, origin: str) -> str:
    """Reject a malformed DSN with a message that names where it came from (never its password)."""
    try:
        psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{origin} is not a valid connection string: {reason}") from None
    return dsn


def describe_dsn(dsn: str) -> str:
    """host:port/dbname for messages, with no password."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<invalid dsn>"
    host = params.get("host") or os.environ.get("PGHOST") or "localhost"
    port = params.get("port") or os.environ.get("PGPORT") or "5432"
    dbname = params.get("dbname") or os.environ.get("PGDATABASE") or params.get("user") or ""
    return f"{host}:{port}/{dbname}"
