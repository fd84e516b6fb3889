"""Throw-away login roles for privilege tests (roles are cluster-wide, so names are unique)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import psycopg
import psycopg.conninfo
from psycopg import sql


@contextlib.contextmanager
def login_role(admin: psycopg.Connection, prefix: str = "r", name: str | None = None) -> Iterator[str]:
    """Create a LOGIN role (trust auth on 127.0.0.1), yield its name, then drop it and what it owns."""
    role = name or f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        yield role
    finally:
        admin.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(role)))
        admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def as_role(dsn: str, role: str) -> psycopg.Connection:
    """An autocommit connection to the same database as `role`."""
    return psycopg.connect(psycopg.conninfo.make_conninfo(dsn, user=role), autocommit=True)
