from __future__ import annotations

import pytest

from pybatch.cli.common import resolve_cli_dsn
from pybatch.config import configured_dsn, describe_dsn, resolve_dsn
from pybatch.errors import ConfigError

# -- the library: dsn=, PYBATCH_DSN, PG*, else a clear error ---------------------------------


def test_argument_wins_over_environment() -> None:
    env = {"PYBATCH_DSN": "dbname=fromenv", "PGHOST": "pghost"}
    resolved = resolve_dsn("dbname=fromarg", environ=env)
    assert (resolved.dsn, resolved.source) == ("dbname=fromarg", "dsn")


def test_pybatch_dsn_wins_over_pg_variables() -> None:
    resolved = resolve_dsn(None, environ={"PYBATCH_DSN": "dbname=fromenv", "PGHOST": "pghost"})
    assert (resolved.dsn, resolved.source) == ("dbname=fromenv", "PYBATCH_DSN")


@pytest.mark.parametrize("variable", ["PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE"])
def test_pg_variables_mean_configured(variable: str) -> None:
    resolved = resolve_dsn(None, environ={variable: "app"})
    assert (resolved.dsn, resolved.source) == ("", "PG* variables")  # an empty conninfo: libpq reads PG*


@pytest.mark.parametrize("environ", [{}, {"PGPASSWORD": "x", "PGSSLMODE": "require", "PYBATCH_DSN": ""}])
def test_library_without_a_database_raises_a_clear_error(environ: dict[str, str]) -> None:
    """Never the embedded cluster: PGPASSWORD or PGSSLMODE alone name no database."""
    assert configured_dsn(None, environ=environ) is None
    with pytest.raises(ConfigError, match=r"^no database given: pass dsn=, set PYBATCH_DSN or PG\* variables$"):
        resolve_dsn(None, environ=environ)


@pytest.mark.parametrize("dsn", ["host='unterminated", "nonsense", "host=a port"])
def test_malformed_dsn_is_named_without_password(dsn: str) -> None:
    with pytest.raises(ConfigError, match=r"^dsn is not a valid connection string"):
        resolve_dsn(dsn, environ={})
    with pytest.raises(ConfigError, match=r"^PYBATCH_DSN is not a valid connection string"):
        resolve_dsn(None, environ={"PYBATCH_DSN": dsn})


# -- the CLI: the same order, named as flags, then the embedded cluster -------------------------


def test_flag_wins_over_environment() -> None:
    env = {"PYBATCH_DSN": "dbname=fromenv", "PGHOST": "pghost"}
    resolved = resolve_cli_dsn("dbname=fromflag", environ=env)
    assert (resolved.dsn, resolved.source) == ("dbname=fromflag", "--dsn")


def test_cli_reads_pybatch_dsn_then_pg_variables() -> None:
    both = {"PYBATCH_DSN": "dbname=fromenv", "PGHOST": "pghost"}
    assert resolve_cli_dsn(None, environ=both).source == "PYBATCH_DSN"
    assert resolve_cli_dsn(None, environ={"PGDATABASE": "app"}).source == "PG* variables"


@pytest.mark.parametrize(("embedded", "environ"), [(False, {}), (True, {"PYBATCH_NO_EMBEDDED": "1"})])
def test_no_embedded_refuses_without_configuration(embedded: bool, environ: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="no database configured"):
        resolve_cli_dsn(None, embedded=embedded, environ=environ)


@pytest.mark.parametrize("dsn", ["host='unterminated", "nonsense", "host=a port"])
def test_malformed_flag_is_named_without_password(dsn: str) -> None:
    with pytest.raises(ConfigError, match="--dsn is not a valid connection string"):
        resolve_cli_dsn(dsn, environ={})


def test_describe_hides_password() -> None:
    text = describe_dsn("postgresql://alice:s3cret@db.example:6543/app")
    assert text == "db.example:6543/app"
    assert "s3cret" not in text
