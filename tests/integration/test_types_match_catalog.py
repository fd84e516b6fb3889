"""The Python types that carry rows of pybatch's views and types name exactly their columns:
adding a figure to a view or to pybatch.flush_result without its Python field (or the other way
round) fails here, not in a user's `pybatch status`."""

from __future__ import annotations

from dataclasses import fields

import psycopg
import pytest

from pybatch import settings, status
from pybatch.flush import FlushResult

VIEWS = {
    "pybatch.flush_history": status.FlushRecord,
    "pybatch.health": status.Health,
    "pybatch.staging_summary": status.StagingSummary,
    "pybatch.staleness": settings.StalenessBudget,
}


@pytest.mark.parametrize("relation", sorted(VIEWS))
def test_each_view_and_its_row_type_have_the_same_columns(conn: psycopg.Connection, relation: str) -> None:
    columns = [
        str(r[0])
        for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 ORDER BY attnum",
            (relation,),
        )
    ]
    assert columns, relation
    assert sorted(f.name for f in fields(VIEWS[relation])) == sorted(columns)


def test_flush_result_has_the_attributes_of_the_sql_type_in_order(conn: psycopg.Connection) -> None:
    attributes = [
        str(r[0])
        for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'pybatch.flush_result'::regclass AND attnum > 0"
            " ORDER BY attnum"
        )
    ]
    assert [f.name for f in fields(FlushResult)] == attributes
