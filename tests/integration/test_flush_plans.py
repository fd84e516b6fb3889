"""What a pass reads: its own rows, never the whole table (migration 0007).

A pass locks its rows through the primary key (the index path prunes each page, so
the update stays HOT) and updates them by the ctids it locked. Before 0007 the
planner could prefer one full scan of the primary key per pass to that many ctid
fetches: on Coder's table loaded in id order (the bench's table; a heap whose order
follows the key makes a full index scan look cheap) every pass of a 10k-agent flush
read all 10,000 entries. The index's own counters show which plan ran.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime

import psycopg

from pybatch import migrate, resources
from pybatch.bench.fleet import agent_ids
from pybatch.bench.fleet_run import reset_agents
from pybatch.bench.strategies import publish_stats
from pybatch.flush import flush
from tests.integration.test_flush_passes import stage_all

AGENTS = 10_000  # Coder's rows pack ~22 to a page at fillfactor 100: ~450 pages
SHARE = 3  # a 5 s flush of a 15 s period merges a third of the fleet


def pkey_entries_read(conn: psycopg.Connection) -> int:
    conn.execute("SELECT pg_stat_clear_snapshot()")
    row = conn.execute(
        "SELECT idx_tup_read FROM pg_stat_user_indexes WHERE indexrelid = 'public.workspace_agents_pkey'::regclass"
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_each_pass_reads_the_primary_key_for_its_own_rows_only(empty_conn: psycopg.Connection) -> None:
    conn = empty_conn
    conn.execute(resources.read_sql("bench/coder_workspace_agents.sql"))
    migrate.apply(conn)
    reset_agents(conn, AGENTS, "coder")
    conn.execute("VACUUM ANALYZE public.workspace_agents")
    ids = agent_ids(AGENTS)
    for round_no in range(3):
        chosen = random.Random(round_no).sample(ids, AGENTS // SHARE)
        stage_all(conn, chosen, datetime(2026, 6, 1, 0, 0, 15 * round_no + 15, tzinfo=UTC))
        publish_stats(conn)  # pg_stat_force_next_flush() where the server has it (15+)
        before = pkey_entries_read(conn)
        result = flush(conn)  # CALL pybatch.flush_in_passes(): the default path
        publish_stats(conn)
        read = pkey_entries_read(conn) - before
        assert result.ok and result.agents_updated == len(chosen) and (result.passes or 0) > 5, result
        # An entry per agent for the lock, and one scan of the table by the hand-off
        # (it numbers each agent's row within its page) at most; a full scan of the
        # key per pass reads 10,000 entries for each of ~15 passes.
        assert read <= len(chosen) + AGENTS, (round_no, read, result.passes)
