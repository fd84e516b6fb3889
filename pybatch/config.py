"""Where the database comes from, in libpq's order:
`--dsn`, then PYBATCH_DSN, then libpq's PG* variables, then the embedded local cluster."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import psycopg.conninfo

from pybatch.errors import ConfigError

# libpq variables that, when set, mean "a database is configured".
PG_ENV_VARS = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE")


@dataclass(frozen=True)
class ResolvedDsn:
    dsn: str
    source: str  # "--dsn", "PYBATCH_DSN", "PG* variables" or "embedded"


def resolve_dsn(
    dsn: str | None = None,
    *,
    embedded: bool = True,
    environ: Mapping[str, str] | None = None,
) -> ResolvedDsn:
    """Pick the DSN to use; start the embedded cluster only when nothing is configured."""
    env = os.environ if environ is None else environ
    if dsn:
        return ResolvedDsn(validate_dsn(dsn, "--dsn"), "--dsn")
    if env.get("PYBATCH_DSN"):
        return ResolvedDsn(validate_dsn(env["PYBATCH_DSN"], "PYBATCH_DSN"), "PYBATCH_DSN")
    if any(env.get(name) for name in PG_ENV_VARS):
        return ResolvedDsn("", "PG* variables")
    if not embedded or env.get("PYBATCH_NO_EMBEDDED", "") not in ("", "0"):
        raise ConfigError(
            "no database configured: pass --dsn, set PYBATCH_DSN or PG* variables "
            "(the embedded cluster is turned off)"
        )
    from pybatch.local import LocalCluster  # imported late: only the fallback needs it

    cluster = LocalCluster.default()
    return ResolvedDsn(cluster.ensure_running(notice=True), "embedded")


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
