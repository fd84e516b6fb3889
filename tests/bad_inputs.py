"""The catalogue of bad inputs: one entry per case, each run by a test.

Surfaces: "CLI" (flags and environment variables; run by tests/acceptance/test_bad_inputs_cli.py),
"client API" (pybatch.client.HeartbeatClient) and "SQL" (pybatch.heartbeats, pybatch.disconnect(),
pybatch.flush(); both run by tests/integration/test_bad_inputs.py).

`error` is a regular expression the error message must match (for the CLI: the single stderr line,
exit status non-zero, no traceback). `error=None` means the input is accepted and the documented
safe outcome in `expected` is checked instead. In every case, rows accepted before stay accepted.

CLI entries are data: `argv` and `env`, with "{dsn}" (a migrated database), "{empty_dsn}" (a database
without pybatch), "{port}" (the test cluster's port), "{busy_port}" (a port something listens on) and "{home}"
(an empty temp dir) substituted.
SQL and client entries name their scenario by `id` (a function of the same name in the test module).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

CLI = "CLI"
CLIENT = "client API"
SQL = "SQL"


@dataclass(frozen=True)
class BadInput:
    id: str
    category: str
    surface: str
    input: str
    expected: str
    error: str | None
    argv: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)


INJECTION = "x'; DROP TABLE public.workspace_agents; --"

BAD_INPUTS: list[BadInput] = [
    # -- malformed uuids ------------------------------------------------------------------------
    BadInput("sql_insert_malformed_uuid", "malformed uuid", SQL,
             "INSERT INTO pybatch.heartbeats (agent_id) VALUES ('not-a-uuid')",
             "rejected by the uuid type; nothing staged", r"invalid input syntax for type uuid"),
    BadInput("sql_copy_one_malformed_row", "malformed uuid", SQL,
             "COPY of 2 good rows and 1 row with agent_id 'zzz'",
             "the whole COPY is rejected; no partial rows are staged", r"invalid input syntax for type uuid"),
    BadInput("sql_disconnect_malformed_uuid", "malformed uuid", SQL,
             f"SELECT pybatch.disconnect('{INJECTION}')",
             "rejected by the uuid type; nothing changes", r"invalid input syntax for type uuid"),
    BadInput("client_beat_malformed_uuid", "malformed uuid", CLIENT,
             "beat('not-a-uuid'), beat(12345), beat(b'...')",
             "InvalidAgentId (ValueError) naming the value; nothing sent", r"agent_id: .* is not a UUID"),
    BadInput("client_beat_malformed_replica", "malformed uuid", CLIENT,
             "beat(agent, replica_id='replica-1')",
             "InvalidHeartbeat naming the value; nothing sent", r"replica_id: .* is not a UUID"),
    BadInput("client_disconnect_malformed_uuid", "malformed uuid", CLIENT,
             f"disconnect({INJECTION!r})", "InvalidAgentId; nothing sent", r"agent_id: .* is not a UUID"),
    # -- NULLs ------------------------------------------------------------------------------------
    BadInput("sql_insert_null_agent", "NULL", SQL, "INSERT ... (agent_id) VALUES (NULL)",
             "not-null violation; nothing staged", r"null value in column \"agent_id\""),
    BadInput("sql_insert_null_beat_at", "NULL", SQL, "INSERT ... (agent_id, beat_at) VALUES (agent, NULL)",
             "not-null violation (beat_at has a server-clock default only when omitted)",
             r"null value in column \"beat_at\""),
    BadInput("sql_null_replica_stays_null", "NULL", SQL, "INSERT ... (agent_id, replica_id) VALUES (agent, NULL)",
             "accepted; the flush stores last_connected_replica_id NULL (never a sentinel)", None),
    BadInput("sql_disconnect_nulls", "NULL", SQL, "pybatch.disconnect(NULL, now()), pybatch.disconnect(agent, NULL)",
             "error naming the NULL argument; nothing changes", r"must not be NULL"),
    BadInput("sql_flush_null_arguments", "NULL", SQL, "pybatch.flush(NULL, NULL)",
             "accepted: the settings cap (max_rows_per_flush) and no lock wait apply", None),
    BadInput("sql_flush_bad_max_rows", "NULL", SQL, "pybatch.flush(-1), pybatch.flush(0)",
             "-1: rejected before anything runs (ConfigError), staging kept; 0: drains nothing",
             r"max_rows must be 0 or more"),
    BadInput("client_beat_none_agent", "NULL", CLIENT, "beat(None), disconnect(None)",
             "InvalidAgentId; nothing sent", r"agent_id: None is not a UUID"),
    # -- timestamps -------------------------------------------------------------------------------
    BadInput("sql_beat_plus_infinity", "far-future timestamp", SQL, "beat_at = 'infinity'",
             "rejected at insert by the CHECK heartbeats_beat_at_finite; nothing staged", r"heartbeats_beat_at_finite"),
    BadInput("sql_beat_year_9999", "far-future timestamp", SQL, "beat_at = '9999-12-31'",
             "dropped by the flush and counted in future_heartbeats (beyond future_tolerance)", None),
    BadInput("sql_beat_out_of_range", "far-future timestamp", SQL, "beat_at = '300000-01-01'",
             "rejected by the timestamptz type", r"out of range"),
    BadInput("sql_beat_minus_infinity", "far-past timestamp", SQL, "beat_at = '-infinity'",
             "rejected at insert by the CHECK heartbeats_beat_at_finite; nothing staged", r"heartbeats_beat_at_finite"),
    BadInput("sql_beat_year_1", "far-past timestamp", SQL, "beat_at = '0001-01-01' on an agent seen in 2026",
             "merged by the timestamp-order rule: only first_connected_at moves back; last_connected_at, "
             "the replica and a later disconnect stand", None),
    BadInput("sql_disconnect_infinity", "far-future timestamp", SQL,
             "pybatch.disconnect(agent, 'infinity') and (agent, '-infinity')",
             "rejected: at must be a finite time; nothing changes", r"must be a finite time"),
    BadInput("sql_disconnect_far_past", "far-past timestamp", SQL,
             "pybatch.disconnect(agent, '0001-01-01') after a 2026 beat",
             "returns false and changes nothing: older than the merged heartbeat", None),
    BadInput("sql_naive_timestamp", "naive datetime", SQL,
             "beat_at = '2026-01-01 00:00' (no zone) under TimeZone 'Asia/Tokyo'",
             "read in the session TimeZone (here 2025-12-31 15:00 UTC); send timestamptz or UTC", None),
    BadInput("client_naive_datetime", "naive datetime", CLIENT, "beat(agent, at=datetime(2026, 1, 1))",
             "InvalidTimestamp (ValueError); nothing sent; also for disconnect()", r"naive datetime"),
    BadInput("client_far_future", "far-future timestamp", CLIENT, "beat(agent, at=datetime(9999, 12, 31, tz=UTC))",
             "InvalidTimestamp: beyond future_tolerance of the client clock; nothing sent",
             r"ahead of this client's clock"),
    BadInput("client_far_past", "far-past timestamp", CLIENT, "beat(agent, at=datetime(1, 1, 1, tz=UTC))",
             "accepted and merged by the timestamp-order rule (first_connected_at moves back only)", None),
    BadInput("client_at_not_datetime", "naive datetime", CLIENT, "beat(agent, at='2026-01-01T00:00:00Z')",
             "InvalidTimestamp: not a datetime", r"is not a datetime"),
    # -- unknown and deleted agents ---------------------------------------------------------------
    BadInput("sql_unknown_agent_beat", "unknown agent", SQL, "a staged beat for an id not in workspace_agents",
             "the flush drops it, counts it in unknown_heartbeats and never creates a row", None),
    BadInput("sql_agent_deleted_before_flush", "unknown agent", SQL,
             "agent deleted from workspace_agents between staging and flush",
             "the flush succeeds, counts the beat in unknown_heartbeats; the other agents merge", None),
    BadInput("sql_disconnect_unknown_agent", "unknown agent", SQL, "pybatch.disconnect(<random uuid>)",
             "error naming the agent (SQLSTATE P0002)", r"no agent .* in public.workspace_agents"),
    BadInput("client_disconnect_unknown_agent", "unknown agent", CLIENT, "disconnect(<random uuid>)",
             "UnknownAgent (LookupError) naming the agent", r"no agent"),
    # -- huge batches -----------------------------------------------------------------------------
    BadInput("sql_huge_copy", "huge batch", SQL, "one COPY of 200,000 rows, flushed with a 50,000-row cap",
             "accepted; each flush drains at most the cap; all rows merge, none lost", None),
    BadInput("client_huge_buffer", "huge batch", CLIENT, "buffered client, 50,000 agents beaten at once",
             "accepted; written by COPY in max_batch chunks; every agent merges", None),
    # -- injection-looking strings ----------------------------------------------------------------
    BadInput("cli_grant_injection_role", "injection", CLI, f"pybatch grant writer \"{INJECTION}\"",
             "the role name is quoted as an identifier; it does not exist, so a one-line error names it",
             r"role .*DROP TABLE.* does not exist", argv=("--dsn", "{dsn}", "grant", "writer", INJECTION)),
    BadInput("cli_dsn_injection", "injection", CLI, "--dsn \"host=x'; DROP TABLE t; --\"",
             "rejected as a malformed connection string, one line", r"not a valid connection string",
             argv=("--dsn", "host=x'; DROP TABLE t; --", "flush")),
    BadInput("cli_dbname_quotes", "injection", CLI, "--dsn \"... dbname='a''b; DROP'\"",
             "cannot connect: the database does not exist; one line naming host:port/db",
             r"cannot connect to 127\.0\.0\.1:\d+/a'b; DROP",
             argv=("--dsn", "host=127.0.0.1 port={port} user=postgres dbname='a\\'b; DROP'", "flush")),
    BadInput("cli_env_dsn_injection", "injection", CLI, "PYBATCH_DSN=\"dbname=x' OR '1'='1\"",
             "rejected as a malformed connection string naming PYBATCH_DSN", r"PYBATCH_DSN is not a valid",
             argv=("flush",), env={"PYBATCH_DSN": "dbname=x' OR '1'='1"}),
    BadInput("cli_user_injection", "injection", CLI, f"--dsn with user=\"{INJECTION}\"",
             "cannot connect: the role does not exist; one line", r"cannot connect",
             argv=("--dsn", "host=127.0.0.1 port={port} dbname=postgres user='x\\'; DROP TABLE t; --'", "flush")),
    # -- CLI flags and environment ----------------------------------------------------------------
    BadInput("cli_max_rows_negative", "bad flag", CLI, "pybatch flush --max-rows -5",
             "usage error naming the value", r"must be positive", argv=("--dsn", "{dsn}", "flush", "--max-rows", "-5")),
    BadInput("cli_max_rows_text", "bad flag", CLI, "pybatch flush --max-rows lots",
             "usage error naming the value", r"'lots' is not a whole number",
             argv=("--dsn", "{dsn}", "flush", "--max-rows", "lots")),
    BadInput("cli_grant_unknown_kind", "bad flag", CLI, "pybatch grant admin ROLE",
             "usage error listing writer, reader, flusher", r"invalid choice: 'admin'",
             argv=("--dsn", "{dsn}", "grant", "admin", "someone")),
    BadInput("cli_no_database", "empty database", CLI, "PYBATCH_NO_EMBEDDED=1 and no --dsn/PYBATCH_DSN/PG*",
             "error: no database configured", r"no database configured",
             argv=("flush",), env={"PYBATCH_NO_EMBEDDED": "1", "PYBATCH_HOME": "{home}"}),
    BadInput("cli_bad_log_level_env", "bad flag", CLI, "PYBATCH_LOG_LEVEL=loud",
             "usage error naming the value", r"loud",
             argv=("--dsn", "{dsn}", "flush"), env={"PYBATCH_LOG_LEVEL": "loud"}),
    # Numbers and durations: ASCII digits only, ranges checked, one line naming the value (issue 11, item 11).
    BadInput("cli_max_rows_bigint", "bad flag", CLI, "pybatch flush --max-rows 99999999999999999999",
             "usage error naming the range (was 'pybatch is not installed')",
             r"argument --max-rows: '99999999999999999999' is out of range \(1 to 1000000000\)",
             argv=("--dsn", "{dsn}", "flush", "--max-rows", "99999999999999999999")),
    BadInput("cli_max_rows_unicode_digits", "bad flag", CLI, "pybatch flush --max-rows ١٢ (Arabic-Indic digits)",
             "usage error: ASCII digits only", r"'١٢' is not a whole number",
             argv=("--dsn", "{dsn}", "flush", "--max-rows", "١٢")),
    BadInput("cli_max_rows_underscore", "bad flag", CLI, "pybatch flush --max-rows 1_000",
             "usage error: ASCII digits only", r"'1_000' is not a whole number",
             argv=("--dsn", "{dsn}", "flush", "--max-rows", "1_000")),
    BadInput("cli_status_negative_flushes", "bad flag", CLI, "pybatch status --flushes -1",
             "usage error naming the value", r"argument --flushes: '-1' must be 0 or more",
             argv=("--dsn", "{dsn}", "status", "--flushes", "-1")),
    BadInput("cli_scheduler_tiny_interval", "bad flag", CLI, "pybatch scheduler --interval 0.00001ms",
             "usage error naming the range 1s-1h (was: ran forever logging constraint errors); the flag is "
             "named once (was `argument --interval: --interval: ...`)",
             r"error: argument --interval: '0\.00001ms' is out of range: the flush interval must be between 1s "
             r"and 1h$", argv=("--dsn", "{dsn}", "scheduler", "--interval", "0.00001ms")),
    BadInput("cli_scheduler_long_interval_env", "bad flag", CLI, "PYBATCH_INTERVAL=2h pybatch scheduler",
             "error naming the variable and the range", r"error: PYBATCH_INTERVAL: '2h' is out of range",
             argv=("--dsn", "{dsn}", "scheduler"), env={"PYBATCH_INTERVAL": "2h"}),
    BadInput("cli_cron_interval_not_doubled", "bad flag", CLI, "pybatch cron install --interval soon",
             "usage error naming the flag once", r"error: argument --interval: 'soon' is not a duration",
             argv=("--dsn", "{dsn}", "cron", "install", "--interval", "soon")),
    BadInput("cli_scheduler_port_in_use", "bad flag", CLI, "pybatch scheduler --metrics-port <a port in use>",
             "one line naming the port, before connecting (was 'unexpected error: OSError')",
             r"error: --metrics-port: cannot serve metrics on port \d+: it is already in use",
             argv=("--dsn", "{dsn}", "scheduler", "--metrics-port", "{busy_port}")),
    BadInput("cli_scheduler_port_underscore", "bad flag", CLI, "pybatch scheduler --metrics-port 9_187",
             "usage error: ASCII digits only", r"'9_187' is not a port number",
             argv=("--dsn", "{dsn}", "scheduler", "--metrics-port", "9_187")),
    BadInput("cli_config_set_overflow", "bad setting", CLI, "pybatch config set flush_interval 99999999999999999999h",
             "one line naming setting, value and range (was 'unexpected error: OverflowError')",
             r"flush_interval: '99999999999999999999h' is out of range: flush_interval must be between 1s and 1h",
             argv=("--dsn", "{dsn}", "config", "set", "flush_interval", "99999999999999999999h")),
    BadInput("cli_config_set_huge_retention", "bad setting", CLI, "pybatch config set history_retention 99999999h",
             "refused with the range (was accepted, then every flush failed with 'timestamp out of range')",
             r"history_retention: '99999999h' is out of range: history_retention must be between 1m and 3650d",
             argv=("--dsn", "{dsn}", "config", "set", "history_retention", "99999999h")),
    BadInput("cli_config_set_huge_future_tolerance", "bad setting", CLI, "pybatch config set future_tolerance 2h",
             "refused with the range (a huge tolerance broke disconnect())",
             r"future_tolerance: '2h' is out of range: future_tolerance must be between 0s and 1h",
             argv=("--dsn", "{dsn}", "config", "set", "future_tolerance", "2h")),
    BadInput("cli_config_set_inactive_timeout_range", "bad setting", CLI, "pybatch config set inactive_timeout 2d",
             "refused with the range", r"inactive_timeout: '2d' is out of range: .* between 1s and 1d",
             argv=("--dsn", "{dsn}", "config", "set", "inactive_timeout", "2d")),
    BadInput("cli_config_set_max_rows_range", "bad setting", CLI, "pybatch config set max_rows_per_flush 0",
             "refused with the range (or `unlimited`)",
             r"max_rows_per_flush: '0' is out of range: .* between 1 and 1000000000",
             argv=("--dsn", "{dsn}", "config", "set", "max_rows_per_flush", "0")),
    BadInput("cli_config_set_unicode_duration", "bad setting", CLI, "pybatch config set flush_interval ١٠s",
             "refused: ASCII digits only", r"flush_interval: '١٠s' is not a duration",
             argv=("--dsn", "{dsn}", "config", "set", "flush_interval", "١٠s")),
    # bench: never rounds --seconds, never runs on an unmigrated database (issue 12, item 7).
    BadInput("cli_bench_seconds_not_whole_flushes", "bad flag", CLI,
             "pybatch bench --flush-interval 10s --seconds 25s",
             "refused with the two nearest windows (was silently rounded up to 30s)",
             r"--seconds: '25s' is not a whole number of flush intervals \(10s\): use 20s or 30s",
             argv=("--dsn", "{dsn}", "bench", "--flush-interval", "10s", "--seconds", "25s")),
    BadInput("cli_bench_empty_database", "empty database", CLI,
             "pybatch bench --table minimal (or --client) on a database without pybatch",
             "one line: run `pybatch migrate` (the bench never migrates a database it is given; --table coder "
             "migrates a scratch database of its own instead)",
             r"lacks pybatch migrations .*: run `.*pybatch migrate` first",
             argv=("--dsn", "{empty_dsn}", "bench", "--table", "minimal", "--agents", "10", "--seconds", "10s")),
    BadInput("cli_bench_client_empty_database", "empty database", CLI, "pybatch bench --client, no pybatch",
             "one line: run `pybatch migrate`", r"lacks pybatch migrations .*: run `.*pybatch migrate` first",
             argv=("--dsn", "{empty_dsn}", "bench", "--client", "--agents", "10")),
    # -- empty / read-only database ---------------------------------------------------------------
    BadInput("cli_flush_empty_database", "empty database", CLI, "pybatch flush on a database without pybatch",
             "error: pybatch is not installed; run `pybatch migrate`", r"pybatch migrate",
             argv=("--dsn", "{empty_dsn}", "flush")),
    BadInput("cli_grant_empty_database", "empty database", CLI, "pybatch grant writer postgres, no pybatch",
             "error: pybatch is not installed; run `pybatch migrate`", r"pybatch migrate",
             argv=("--dsn", "{empty_dsn}", "grant", "writer", "postgres")),
    BadInput("client_empty_database", "empty database", CLIENT, "immediate beat() against a database without pybatch",
             "NotMigrated: run `pybatch migrate`", r"pybatch migrate"),
    BadInput("sql_read_only_database", "read-only database", SQL,
             "ALTER DATABASE ... SET default_transaction_read_only = on; INSERT, disconnect(), flush()",
             "each fails with 'read-only transaction'; staging and workspace_agents unchanged",
             r"read-only transaction"),
    BadInput("client_read_only_database", "read-only database", CLIENT,
             "immediate beat() and buffered beats against a read-only database",
             "immediate: a pybatch error; buffered: rows stay buffered, close() raises naming them",
             r"read-only transaction"),
    BadInput("cli_flush_read_only_database", "read-only database", CLI, "pybatch flush on a read-only database",
             "one-line error; staging kept", r"read-only transaction",
             argv=("--dsn", "{readonly_dsn}", "flush")),
    # -- wrong password ---------------------------------------------------------------------------
    BadInput("wrong_password_cli_and_client", "wrong password", CLI,
             "pybatch flush and HeartbeatClient with password=wrong (scram-sha-256 in pg_hba)",
             "one line: password authentication failed for the user; the password never appears",
             r"password authentication failed"),
    # -- a server that drops connections ----------------------------------------------------------
    BadInput("sql_flush_connection_killed", "dropped connection", SQL,
             "pg_terminate_backend of the flushing backend mid-flush",
             "the flush transaction rolls back; staging keeps every row; the next flush merges them",
             r"terminat|server closed|consuming input failed"),
    BadInput("client_immediate_connection_killed", "dropped connection", CLIENT,
             "pg_terminate_backend of an immediate client's connection between beats",
             "the next beat() reconnects (or raises DatabaseUnavailable and the one after reconnects); "
             "every beat() that returned is staged", None),
    BadInput("client_buffered_connection_killed", "dropped connection", CLIENT,
             "pg_terminate_backend of a buffered client's connection between writes",
             "the writer reconnects and retries; close() writes everything; nothing lost", None),
]


def by_surface(*surfaces: str) -> list[BadInput]:
    return [entry for entry in BAD_INPUTS if entry.surface in surfaces]
