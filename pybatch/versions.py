"""The PostgreSQL majors pybatch supports, and the check that refuses the others.

Supported: PostgreSQL 15 to 18, each tested in CI (the system's 15 with the whole suite, 16, 17
and 18 with the integration suite). Older servers are refused: 13 lacks what the views and
routines use (round(numeric) of EXTRACT, pg_terminate_backend(pid, timeout)), 14 lacks
pg_stat_force_next_flush(), and both are past community support (November 2025 and November
2026). A newer major than the last tested is allowed, with a warning: it is not tested yet.
"""

from __future__ import annotations

import logging

import psycopg

from pybatch.errors import UnsupportedServer

log = logging.getLogger(__name__)

MIN_MAJOR = 15
MAX_TESTED_MAJOR = 18
SUPPORTED = f"PostgreSQL {MIN_MAJOR} to {MAX_TESTED_MAJOR}"


def server_version(conn: psycopg.Connection) -> tuple[int, str]:
    """The server's version as a number (150018) and as it writes it ("15.18"), from the
    connection's start-up parameters: no query, no privilege."""
    text = conn.info.parameter_status("server_version") or str(conn.info.server_version)
    return conn.info.server_version, text.split(" ", 1)[0]


def major(number: int) -> int:
    return number // 10000


def is_supported(number: int) -> bool:
    return major(number) >= MIN_MAJOR


def is_tested(number: int) -> bool:
    return MIN_MAJOR <= major(number) <= MAX_TESTED_MAJOR


def require_supported(conn: psycopg.Connection, operation: str) -> None:
    """UnsupportedServer, naming the version and the supported range, unless the server is one
    pybatch supports; a newer major than the last tested only logs a warning."""
    number, text = server_version(conn)
    if not is_supported(number):
        raise UnsupportedServer(
            f"{operation} refused: PostgreSQL {text} is not supported; pybatch supports {SUPPORTED} "
            f"(server {conn.info.host}:{conn.info.port}; upgrade it)",
            number=number,
            version=text,
        )
    if not is_tested(number):
        log.warning(
            "PostgreSQL %s is newer than the majors pybatch is tested on (%s)",
            text,
            SUPPORTED,
            extra={"server_version": text, "operation": operation},
        )
