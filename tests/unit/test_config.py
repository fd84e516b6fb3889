from __future__ import annotations

import pytest

from pybatch.config import describe_dsn, resolve_dsn
from pybatch.errors import ConfigError


def test_flag_wins_over_environment() -> None:
    env = {"PYBATCH_DSN": "dbname=fromenv", "PGHOST": "pghost"}
    resolved = resolve_dsn("dbname=fromflag", environ=env)
    assert (resolved.dsn, resolved.source) == ("dbname=fromflag", "--dsn")


def test_pybatch_dsn_wins_over_pg_variables() -> None:
    resolved = resolve_dsn(None, environ={"PYBATCH_DSN": "dbname=fromenv", "PGHOST": "pghost"})
    assert (resolved.dsn, resolved.source) == ("dbname=fromenv", "PYBATCH_DSN")


def test_pg_variables_mean_configured() -> None:
    resolved = resolve_dsn(None, environ={"PGDATABASE": "app"})
    assert (resolved.dsn, resolved.source) == ("", "PG* variables")


@pytest.mark.parametrize(("embedded", "environ"), [(False, {}), (True, {"PYBATCH_NO_EMBEDDED": "1"})])
def test_no_embedded_refuses_without_configuration(embedded: bool, environ: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="no database configured"):
        resolve_dsn(None, embedded=embedded, environ=environ)


@pytest.mark.parametrize("dsn", ["host='unterminated", "nonsense", "host=a port"])
def test_malformed_dsn_is_named_without_password(dsn: str) -> None:
    with pytest.raises(ConfigError, match="--dsn is not a valid connection string"):
        resolve_dsn(dsn, environ={})


def test_describe_hides_password() -> None:
    text = describe_dsn("postgresql://alice:s3cret@db.example:6543/app")
    assert text == "db.example:6543/app"
    assert "s3cret" not in text
