"""The committed-pass flush on the table as found, and the defects it fixes.

HOT at fillfactor 100, updated_at from the events themselves, a row lock held by an
app, a poison agent, a lock no outsider can take, the future check after a lock wait,
a disconnect that never waits for a whole flush, and triggers that never gain rights.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import sql

from pybatch import migrate
from pybatch.doctor import FAIL, doctor
from pybatch.errors import PybatchError
from pybatch.flush import FlushResult, flush
from tests.conftest import run_pybatch
from tests.helpers import connected, wait_until_blocked_by
from tests.integration.roles import as_role, login_role

# Coder's rows average ~360 B: a filler column makes ours as wide, so ~20 share a page.
CODER_ROW_FILLER = 300


def make_agents(conn: psycopg.Connection, n: int, created: datetime | None = None) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(n)]
    conn.execute(
        "INSERT INTO public.workspace_agents (id, created_at, updated_at) SELECT unnest(%s::uuid[]), %s, %s",
        (ids, created or datetime(2026, 1, 1, tzinfo=UTC), created or datetime(2026, 1, 1, tzinfo=UTC)),
    )
    return ids


def stage_all(conn: psycopg.Connection, agents: list[uuid.UUID], at: datetime) -> None:
    with conn.cursor() as cur, cur.copy("COPY pybatch.heartbeats (agent_id, beat_at) FROM STDIN") as copy:
        for agent in agents:
            copy.write_row((agent, at))


def unmerged(conn: psycopg.Connection) -> int:
    row = conn.execute(
        "SELECT (SELECT count(*) FROM pybatch.heartbeats) + (SELECT COALESCE(sum(beats), 0) FROM pybatch.pending)"
    ).fetchone()
    assert row is not None
    return int(row[0])


def one(conn: psycopg.Connection, query: str, params: tuple[object, ...] = ()) -> object:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def coder_shaped(conn: psycopg.Connection, agents: int) -> list[uuid.UUID]:
    """workspace_agents at fillfactor 100 with rows as wide as Coder's, packed tight."""
    conn.execute(
        sql.SQL("ALTER TABLE public.workspace_agents ADD COLUMN filler text NOT NULL DEFAULT repeat('x', {})").format(
            sql.Literal(CODER_ROW_FILLER)
        )
    )
    conn.execute("ALTER TABLE public.workspace_agents SET (fillfactor = 100)")
    autovacuum_off(conn)
    ids = make_agents(conn, agents)
    conn.execute("VACUUM FULL public.workspace_agents")
    return ids


# -- HOT on a fillfactor-100 table ----------------------------------------------------

ROUNDS_START = datetime.now(UTC) - timedelta(hours=1)


def rounds(conn: psycopg.Connection, agents: list[uuid.UUID], n: int, run: object, first: int = 0) -> list[FlushResult]:
    """n rounds of one beat per agent, 15 s apart from round `first` on, each flushed by `run`."""
    results = []
    for i in range(first, first + n):
        stage_all(conn, agents, ROUNDS_START + timedelta(seconds=15 * i))
        result = run(conn)  # type: ignore[operator]
        assert result.ok and result.agents_updated == len(agents), result
        results.append(result)
    return results


def autovacuum_off(conn: psycopg.Connection) -> None:
    """Autovacuum off for every table of this database. An ANALYZE holds a snapshot, and the
    pruning horizon is the database's: while one runs on any table here (staging, pending and
    flush_log churn enough to trigger it), the old versions of the passes that commit cannot be
    pruned, and at fillfactor 100 the next passes find no room (docs/benchmarks.md, "The one
    non-HOT round"). Under CPU load one landed in the steady rounds of a full run twice (heap
    +15.6 %, HOT still 99 %); an ANALYZE loop on pending and flush_log beside them grew the heap
    5.7 %. These tests measure the flush alone; the scale benchmark measures it beside autovacuum."""
    tables = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_catalog.pg_class c"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relkind = 'r' AND n.nspname IN ('public', 'pybatch')"
    ).fetchall()
    for schema, name in tables:
        conn.execute(sql.SQL("ALTER TABLE {} SET (autovacuum_enabled = off)").format(sql.Identifier(schema, name)))


def analyzes(conn: psycopg.Connection) -> object:
    """Which tables of this database autovacuum visited, for a failure's message."""
    return one(
        conn,
        "SELECT COALESCE(pg_catalog.string_agg(relid::regclass::text || ' (autoanalyze ' || autoanalyze_count"
        " || ', autovacuum ' || autovacuum_count || ')', ', '), 'none')"
        " FROM pg_catalog.pg_stat_user_tables WHERE autoanalyze_count + autovacuum_count > 0",
    )


def heap_and_indexes(conn: psycopg.Connection) -> tuple[int, int]:
    row = conn.execute(
        "SELECT pg_relation_size('public.workspace_agents'), pg_indexes_size('public.workspace_agents')"
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def test_committed_passes_stay_hot_at_fillfactor_100_and_the_heap_stops_growing(conn: psycopg.Connection) -> None:
    agents = coder_shaped(conn, 4000)
    warm = rounds(conn, agents, 5, flush)
    heap_before, indexes_before = heap_and_indexes(conn)
    steady = rounds(conn, agents, 10, flush, first=5)
    heap_after, indexes_after = heap_and_indexes(conn)
    hot = sum(r.hot_updates or 0 for r in steady) / sum(r.agents_updated or 0 for r in steady)
    assert hot >= 0.95, (hot, [r.hot_updates for r in warm + steady], analyzes(conn))
    assert all((r.passes or 0) > 1 for r in steady)  # many rows per page: several passes
    assert heap_after <= heap_before * 1.10, (heap_before, heap_after, analyzes(conn))
    assert indexes_after <= indexes_before * 1.10, (indexes_before, indexes_after)


def test_one_transaction_flush_is_correct_but_loses_hot_on_a_full_page(conn: psycopg.Connection) -> None:
    """The contrast that shows the HOT test above can fail: the same steps in one transaction."""
    agents = coder_shaped(conn, 2000)

    def in_transaction(c: psycopg.Connection) -> FlushResult:
        with c.transaction():
            return flush(c)

    steady = rounds(conn, agents, 6, in_transaction)[2:]
    hot = sum(r.hot_updates or 0 for r in steady) / sum(r.agents_updated or 0 for r in steady)
    assert hot < 0.5, hot


# -- updated_at ------------------------------------------------------------------------


def test_updated_at_is_the_newest_event_applied_never_the_flush_start(dsn: str, conn: psycopg.Connection) -> None:
    old = datetime.now(UTC) - timedelta(minutes=5)
    a, b, c = make_agents(conn, 3, created=old)
    conn.execute(
        "UPDATE public.workspace_agents SET updated_at = %s WHERE id = %s",
        (datetime.now(UTC) + timedelta(minutes=10), c),
    )  # an app's lifecycle update, newer than any beat
    with psycopg.connect(dsn) as holder:
        holder.execute("SELECT FROM pybatch.flush_lock FOR UPDATE")
        result: list[FlushResult] = []
        waiting = threading.Thread(
            target=lambda: result.append(flush(psycopg.connect(dsn, autocommit=True), lock_wait=5))
        )
        waiting.start()
        wait_until_blocked_by(conn, holder.info.backend_pid)  # the flush has started and waits
        beat_a = datetime.now(UTC)  # beats and disconnects arrive meanwhile
        stage_all(conn, [a, c], beat_a)
        disconnect_b = datetime.now(UTC)
        assert disconnect_b > beat_a
        conn.execute("SELECT pybatch.disconnect(%s, %s)", (b, disconnect_b))
        holder.rollback()
        waiting.join()
    assert result and result[0].ok and result[0].agents_updated == 2
    assert result[0].started_at < beat_a  # the flush began before the beat it applied
    rows: dict[uuid.UUID, datetime] = dict(
        conn.execute("SELECT id, updated_at FROM public.workspace_agents").fetchall()
    )
    assert rows[a] == beat_a  # the beat's own instant, as Coder writes it
    assert rows[b] == disconnect_b  # the disconnect's own instant
    assert rows[c] > beat_a  # never backwards past another writer's newer value
    # An older beat later on changes nothing and moves nothing back.
    stage_all(conn, [a], beat_a - timedelta(seconds=30))
    flush(conn)
    assert one(conn, "SELECT updated_at FROM public.workspace_agents WHERE id = %s", (a,)) == beat_a


# -- Hardening: the future check, a locked row, a poison agent ----------------------------


def test_fresh_beats_are_never_future_even_after_a_long_lock_wait(dsn: str, conn: psycopg.Connection) -> None:
    agents = make_agents(conn, 50)
    conn.execute("UPDATE pybatch.settings SET future_tolerance = '0'")
    with psycopg.connect(dsn) as holder:
        holder.execute("SELECT FROM pybatch.flush_lock FOR UPDATE")
        result: list[FlushResult] = []
        waiting = threading.Thread(
            target=lambda: result.append(flush(psycopg.connect(dsn, autocommit=True), lock_wait=5))
        )
        waiting.start()
        wait_until_blocked_by(conn, holder.info.backend_pid)
        # Stamped by the server clock while the flush waits: newer than the flush's start.
        conn.execute("INSERT INTO pybatch.heartbeats (agent_id) SELECT unnest(%s::uuid[])", (agents,))
        holder.rollback()
        waiting.join()
    assert result[0].ok and result[0].future_heartbeats == 0 and result[0].agents_updated == 50


def test_no_fresh_beat_is_dropped_as_future_under_concurrent_writers(dsn: str, conn: psycopg.Connection) -> None:
    agents = make_agents(conn, 200)
    conn.execute("UPDATE pybatch.settings SET future_tolerance = '0'")
    stop = threading.Event()
    # One count per writer: `+=` on a shared slot is not atomic across threads.
    written = [0, 0, 0]

    def writer(slot: int) -> None:
        with psycopg.connect(dsn, autocommit=True) as c:
            while not stop.is_set():
                c.execute("INSERT INTO pybatch.heartbeats (agent_id) SELECT unnest(%s::uuid[])", (agents[:50],))
                written[slot] += 50

    threads = [threading.Thread(target=writer, args=(slot,)) for slot in range(len(written))]
    for thread in threads:
        thread.start()
    results = []
    try:
        for _ in range(30):
            results.append(flush(conn))
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    while unmerged(conn):
        results.append(flush(conn))
    assert sum(written) > 1000
    assert sum(r.future_heartbeats or 0 for r in results) == 0
    assert sum(r.rows_staged or 0 for r in results) == sum(written)


def test_a_row_locked_by_an_app_defers_that_agent_and_blocks_nobody(dsn: str, conn: psycopg.Connection) -> None:
    agents = make_agents(conn, 200)
    stage_all(conn, agents, datetime.now(UTC) - timedelta(seconds=5))
    with psycopg.connect(dsn) as app:
        app.execute("SELECT FROM public.workspace_agents WHERE id = %s FOR UPDATE", (agents[0],))
        started = time.monotonic()
        result = flush(conn)
        took = time.monotonic() - started
        assert result.ok and result.agents_updated == 199 and result.deferred_agents == 1
        assert took < 5, took
        # Every other agent can be disconnected at once; nothing waits behind the flush.
        conn.execute("SET lock_timeout = '2s'")
        for agent in agents[1:21]:
            assert one(conn, "SELECT pybatch.disconnect(%s)", (agent,)) is True
        conn.execute("RESET lock_timeout")
        app.rollback()
    assert unmerged(conn) == 1  # the deferred agent's beat is kept
    later = flush(conn)
    assert later.ok and later.agents_updated == 1 and unmerged(conn) == 0
    assert (
        one(conn, "SELECT last_connected_at IS NOT NULL FROM public.workspace_agents WHERE id = %s", (agents[0],))
        is True
    )


@pytest.mark.parametrize("row_held", [False, True], ids=["no row held", "a row held"])
def test_the_callers_lock_timeout_is_kept(dsn: str, conn: psycopg.Connection, row_held: bool) -> None:
    # A pass merges without a lock step under a 20 ms lock_timeout of its own (and,
    # when a row is held, falls back to locking): the caller's setting is back after.
    agents = make_agents(conn, 50)
    stage_all(conn, agents, datetime.now(UTC) - timedelta(seconds=5))
    with psycopg.connect(dsn) as app:
        if row_held:
            app.execute("SELECT FROM public.workspace_agents WHERE id = %s FOR UPDATE", (agents[0],))
        with conn.transaction():
            conn.execute("SET LOCAL lock_timeout = '3s'")
            result = flush(conn)  # inside a transaction: SELECT pybatch.flush()
            assert one(conn, "SHOW lock_timeout") == "3s"
        app.rollback()
    assert result.ok and result.agents_updated == 50 - row_held and result.deferred_agents == int(row_held)


POISON_TRIGGER = """
    CREATE FUNCTION public.reject_one() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.id = {poison} THEN RAISE EXCEPTION 'agent rejected by the app'; END IF;
        RETURN NEW;
    END $$;
    CREATE TRIGGER reject_one BEFORE UPDATE ON public.workspace_agents
        FOR EACH ROW EXECUTE FUNCTION public.reject_one();
"""


def test_a_poison_agent_is_quarantined_and_the_fleet_merges(conn: psycopg.Connection) -> None:
    agents = make_agents(conn, 100)
    poison = agents[37]
    conn.execute(sql.SQL(POISON_TRIGGER).format(poison=sql.Literal(str(poison))))
    beat = datetime.now(UTC) - timedelta(seconds=5)
    stage_all(conn, agents, beat)
    for _ in range(3):  # every flush: the others merge; the poison agent never blocks them
        result = flush(conn)
        assert result.error is None and result.agents_updated in (99, 1), result
        stage_all(conn, agents[:1], datetime.now(UTC) - timedelta(seconds=1))
    merged = one(conn, "SELECT count(*) FROM public.workspace_agents WHERE last_connected_at IS NOT NULL")
    assert merged == 99
    row = conn.execute("SELECT beats, error, last_at FROM pybatch.quarantine WHERE agent_id = %s", (poison,)).fetchone()
    assert row is not None and row[0] == 1 and "agent rejected by the app" in row[1] and row[2] == beat
    logged = one(conn, "SELECT sum(quarantined_agents) FROM pybatch.flush_log")
    assert logged == 1
    # Once the app is fixed, a requeue merges the kept beat.
    conn.execute("DROP TRIGGER reject_one ON public.workspace_agents")
    assert one(conn, "SELECT pybatch.requeue_quarantined()") == 1
    flush(conn)
    assert one(conn, "SELECT last_connected_at FROM public.workspace_agents WHERE id = %s", (poison,)) == beat
    assert one(conn, "SELECT count(*) FROM pybatch.quarantine") == 0


@pytest.mark.parametrize("row_cap", [None, 10])
def test_one_poisoned_agent_on_a_small_fleets_only_page_never_stops_the_others(
    conn: psycopg.Connection, row_cap: int | None
) -> None:
    """Issue 19 #6: 20 agents share one heap page, so each pass holds one agent; the poisoned
    one is in pass 1. Every flush still merges the other 19 (with a cap of 10 rows too: the
    others it drained) and the poisoned agent goes to quarantine."""
    agents = make_agents(conn, 20)
    pages = one(conn, "SELECT count(DISTINCT (ctid::text::point)[0]) FROM public.workspace_agents")
    assert pages == 1
    first_in_page = conn.execute("SELECT id FROM public.workspace_agents ORDER BY ctid LIMIT 1").fetchone()
    assert first_in_page is not None
    poison = first_in_page[0]
    conn.execute(sql.SQL(POISON_TRIGGER).format(poison=sql.Literal(str(poison))))
    if row_cap is not None:
        conn.execute("UPDATE pybatch.settings SET max_rows_per_flush = %s", (row_cap,))
    others = [a for a in agents if a != poison]
    base = datetime.now(UTC) - timedelta(seconds=30)
    for round_no in range(3):
        beat = base + timedelta(seconds=round_no)
        stage_all(conn, agents, beat)
        while one(conn, "SELECT count(*) FROM pybatch.heartbeats"):
            result = flush(conn)
            assert result.error is None, result
        merged = one(
            conn,
            "SELECT count(*) FROM public.workspace_agents WHERE id = ANY (%s) AND last_connected_at = %s",
            (others, beat),
        )
        assert merged == 19, (round_no, merged)
    assert one(conn, "SELECT count(*) FROM pybatch.quarantine WHERE agent_id = %s", (poison,)) == 1
    assert one(conn, "SELECT count(*) FROM pybatch.quarantine") == 1
    assert one(conn, "SELECT last_connected_at FROM public.workspace_agents WHERE id = %s", (poison,)) is None


REJECT_ALL_TRIGGER = """
    CREATE FUNCTION public.reject_all() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN RAISE EXCEPTION 'the app is down'; END $$;
    CREATE TRIGGER reject_all BEFORE UPDATE ON public.workspace_agents
        FOR EACH ROW EXECUTE FUNCTION public.reject_all();
"""


def test_a_failure_of_every_agent_is_systemic_and_keeps_them_pending(conn: psycopg.Connection) -> None:
    agents = make_agents(conn, 20)
    conn.execute(REJECT_ALL_TRIGGER)
    stage_all(conn, agents, datetime.now(UTC) - timedelta(seconds=5))
    result = flush(conn)
    assert result.error is not None and "the app is down" in result.error
    assert one(conn, "SELECT count(*) FROM pybatch.pending") == 20  # nothing lost, nothing quarantined
    assert one(conn, "SELECT count(*) FROM pybatch.quarantine") == 0
    conn.execute("DROP TRIGGER reject_all ON public.workspace_agents")
    assert flush(conn).agents_updated == 20


def test_a_disconnect_waits_for_one_pass_not_the_whole_flush(dsn: str, conn: psycopg.Connection) -> None:
    agents = coder_shaped(conn, 200)  # ~20 rows per page: ~20 passes
    conn.execute("""
        CREATE FUNCTION public.slow() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_sleep(0.01); RETURN NEW; END $$;
        CREATE TRIGGER slow BEFORE UPDATE ON public.workspace_agents FOR EACH ROW EXECUTE FUNCTION public.slow();
    """)
    stage_all(conn, agents, datetime.now(UTC) - timedelta(seconds=5))
    done = threading.Event()
    result: list[FlushResult] = []

    def run() -> None:
        with psycopg.connect(dsn, autocommit=True) as c:
            result.append(flush(c))
        done.set()

    flusher = threading.Thread(target=run)
    flusher.start()
    time.sleep(0.4)  # a few passes in
    waits = []
    for agent in agents[-5:]:
        started = time.monotonic()
        conn.execute("SELECT pybatch.disconnect(%s)", (agent,))
        waits.append(time.monotonic() - started)
        assert not done.is_set() or len(waits) > 1
    disconnected_before_the_end = not done.is_set()
    flusher.join()
    assert result[0].ok and (result[0].passes or 0) >= 5
    assert disconnected_before_the_end, "the flush ended before the disconnects: the test proves nothing"
    assert max(waits) < result[0].duration.total_seconds() / 2, (waits, result[0].duration)
    # The disconnects stand against the older staged beats.
    assert (
        one(
            conn,
            "SELECT count(*) FROM public.workspace_agents WHERE disconnected_at >= last_connected_at AND id = ANY(%s)",
            (agents[-5:],),
        )
        == 5
    )


# -- Hardening: locks no outsider can take -------------------------------------------------

OLD_ADVISORY_KEYS = (7089336938131513954, 7089336938131513955, 7089336938131513956)


def test_an_outsider_cannot_stall_flushing(dsn: str, conn: psycopg.Connection) -> None:
    (agent,) = make_agents(conn, 1)
    with login_role(conn, "outsider") as role, as_role(dsn, role) as outsider:
        for key in OLD_ADVISORY_KEYS:  # the keys earlier versions relied on
            outsider.execute("SELECT pg_advisory_lock(%s)", (key,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            outsider.execute("SELECT FROM pybatch.flush_lock FOR UPDATE")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            outsider.execute("SELECT pybatch.scheduler_claim('me', '1 hour')")
        stage_all(conn, [agent], datetime.now(UTC) - timedelta(seconds=1))
        result = flush(conn)
        assert result.ok and not result.skipped and result.agents_updated == 1


def test_pybatch_flush_exits_3_when_skipped_and_says_who_holds_the_lock(dsn: str, conn: psycopg.Connection) -> None:
    with psycopg.connect(dsn, application_name="long-flush") as holder:
        holder.execute("SELECT FROM pybatch.flush_lock FOR UPDATE")
        done = run_pybatch("flush", "--dsn", dsn)
        holders = conn.execute("SELECT application_name, holding FROM pybatch.flush_lock_holders").fetchall()
        holder.rollback()
    assert done.returncode == 3, done
    assert "skipped" in done.stderr and "Traceback" not in done.stderr
    assert ("long-flush", True) in holders
    assert run_pybatch("flush", "--dsn", dsn).returncode == 0


# -- Hardening: a table owner's trigger never runs with more rights -------------------------

ESCALATING_TRIGGER = """
    CREATE FUNCTION public.escalate() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        EXECUTE format('ALTER ROLE %I SUPERUSER', {owner});
        RETURN NEW;
    EXCEPTION WHEN insufficient_privilege THEN
        RETURN NEW;  -- the attack failed: the merge must go on
    END $$;
    CREATE TRIGGER escalate BEFORE UPDATE ON public.workspace_agents
        FOR EACH ROW EXECUTE FUNCTION public.escalate();
"""


@pytest.fixture
def app_owner(conn: psycopg.Connection) -> Iterator[str]:
    """A non-superuser role that owns public.workspace_agents, as Coder's app role does."""
    with login_role(conn, "app") as role:
        conn.execute(sql.SQL("ALTER TABLE public.workspace_agents OWNER TO {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(role)))  # for its triggers
        yield role
        conn.execute("ALTER TABLE public.workspace_agents OWNER TO postgres")


def is_superuser(conn: psycopg.Connection, role: str) -> bool:
    return bool(one(conn, "SELECT rolsuper FROM pg_roles WHERE rolname = %s", (role,)))


def test_a_table_owners_trigger_never_runs_as_superuser(dsn: str, conn: psycopg.Connection, app_owner: str) -> None:
    migrate.apply(conn)  # what an operator runs; it gives the merge functions to the table's owner
    owners = conn.execute(
        "SELECT DISTINCT pg_get_userbyid(proowner) FROM pg_proc WHERE oid = ANY(ARRAY["
        "'pybatch.flush_begin(bigint,interval)'::regprocedure, 'pybatch.flush_pass(pybatch.flush_result)',"
        "'pybatch.disconnect(uuid,timestamptz)', 'pybatch.flush(bigint,interval)']::regprocedure[])"
    ).fetchall()
    assert owners == [(app_owner,)]
    with as_role(dsn, app_owner) as owner:
        owner.execute(sql.SQL(ESCALATING_TRIGGER).format(owner=sql.Literal(app_owner)))
    agents = make_agents(conn, 3)
    stage_all(conn, agents, datetime.now(UTC) - timedelta(seconds=2))
    assert flush(conn).agents_updated == 3  # run by a superuser caller
    with conn.transaction():
        assert flush(conn).ok  # the one-transaction path too
    conn.execute("SELECT pybatch.disconnect(%s)", (agents[0],))
    assert not is_superuser(conn, app_owner)


def test_migrate_refuses_when_it_cannot_act_as_the_table_owner(empty_dsn: str) -> None:
    with (
        psycopg.connect(empty_dsn, autocommit=True) as admin,
        login_role(admin, "owner") as owner,
        login_role(admin, "migrator") as migrator,
    ):
        admin.execute(
            sql.SQL(
                "CREATE TABLE public.workspace_agents (id uuid PRIMARY KEY,"
                " created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL"
                " DEFAULT now(), first_connected_at timestamptz, last_connected_at timestamptz,"
                " disconnected_at timestamptz, last_connected_replica_id uuid,"
                " connection_timeout_seconds integer NOT NULL DEFAULT 0)"
            )
        )
        admin.execute(sql.SQL("ALTER TABLE public.workspace_agents OWNER TO {}").format(sql.Identifier(owner)))
        admin.execute(
            sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
                sql.Identifier(admin.info.dbname), sql.Identifier(migrator)
            )
        )
        admin.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(migrator)))
        migrator_dsn = psycopg.conninfo.make_conninfo(empty_dsn, user=migrator)
        with pytest.raises(PybatchError) as raised:
            connected(migrator_dsn, migrate.apply)
        assert f"cannot act as {owner}" in str(raised.value) and "pybatch migrate" in str(raised.value)
        done = run_pybatch("migrate", "--dsn", migrator_dsn)
        assert done.returncode == 1 and "Traceback" not in done.stderr
        assert f"cannot act as {owner}" in done.stderr
        # Refused before anything was applied: no half install, not even bookkeeping (issue 19 #10).
        assert admin.execute("SELECT to_regnamespace('pybatch'), to_regnamespace('pybatch_migrations')").fetchone() == (
            None,
            None,
        )
        admin.execute("DROP SCHEMA IF EXISTS pybatch CASCADE")
        admin.execute("DROP SCHEMA IF EXISTS pybatch_migrations CASCADE")
        admin.execute(
            sql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(
                sql.Identifier(admin.info.dbname), sql.Identifier(migrator)
            )
        )
        admin.execute(sql.SQL("REVOKE ALL ON SCHEMA public FROM {}").format(sql.Identifier(migrator)))


# -- Hardening: settings that used to stop all flushing -------------------------------------


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("history_retention", "99999999 hours"),
        ("future_tolerance", "99999999 hours"),
        ("flush_interval", "0.00001 ms"),
        ("max_rows_per_flush", "99999999999"),
    ],
)
def test_settings_that_would_break_flushing_are_refused(conn: psycopg.Connection, column: str, value: str) -> None:
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(sql.SQL("UPDATE pybatch.settings SET {} = %s").format(sql.Identifier(column)), (value,))
    assert flush(conn).ok


PENDING_SIZE = "SELECT pg_relation_size('pybatch.pending')"
TIDY_THRESHOLD = 8 * 1024 * 1024


def pending_size(conn: psycopg.Connection) -> int:
    return int(str(one(conn, PENDING_SIZE)))


def test_the_hand_off_file_is_truncated_once_past_8_mb(conn: psycopg.Connection) -> None:
    """Each flush writes and deletes a flush's worth of pending rows. A small file is left to
    autovacuum (a TRUNCATE scans every shared buffer); past 8 MB the default path truncates it
    once nothing is pending; inside a transaction nothing is truncated, so the views stay readable."""
    # No autovacuum here: it could trim the small file's empty pages while this test reads its size.
    conn.execute("ALTER TABLE pybatch.pending SET (autovacuum_enabled = false)")
    agents = make_agents(conn, 2000)
    stage_all(conn, agents, datetime.now(UTC) - timedelta(seconds=10))
    assert flush(conn).agents_updated == 2000
    assert 0 < pending_size(conn) < TIDY_THRESHOLD  # left as it is
    # Dead rows of earlier hand-offs, past 8 MB: the next flush starts again from an empty file.
    conn.execute(
        "INSERT INTO pybatch.pending (agent_id, first_at, last_at, beats, pass_no)"
        " SELECT gen_random_uuid(), now(), now(), 1, 1 FROM generate_series(1, 120000)"
    )
    conn.execute("DELETE FROM pybatch.pending")
    assert pending_size(conn) >= TIDY_THRESHOLD
    stage_all(conn, agents, datetime.now(UTC) - timedelta(seconds=5))
    assert flush(conn).agents_updated == 2000
    assert pending_size(conn) == 0
    # In one transaction (SELECT pybatch.flush()) nothing is truncated, so the views stay readable.
    conn.execute(
        "INSERT INTO pybatch.pending (agent_id, first_at, last_at, beats, pass_no)"
        " SELECT gen_random_uuid(), now(), now(), 1, 1 FROM generate_series(1, 120000)"
    )
    conn.execute("DELETE FROM pybatch.pending")
    stage_all(conn, agents, datetime.now(UTC))
    with conn.transaction():
        assert flush(conn).agents_updated == 2000
        locks = one(
            conn,
            "SELECT count(*) FROM pg_locks WHERE relation = 'pybatch.pending'::regclass"
            " AND mode = 'AccessExclusiveLock'",
        )
    assert locks == 0
    assert pending_size(conn) >= TIDY_THRESHOLD


# -- Hardening III: nobody gains superuser through the merge functions ------------------------------

LOGGING_TRIGGER = """
    CREATE TABLE public.trigger_ran_as (who text, superuser boolean);
    GRANT INSERT ON public.trigger_ran_as TO PUBLIC;
    CREATE FUNCTION public.log_runner() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO public.trigger_ran_as
        SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user;
        RETURN NEW;
    END $$;
    CREATE TRIGGER log_runner BEFORE UPDATE ON public.workspace_agents
        FOR EACH ROW EXECUTE FUNCTION public.log_runner();
"""


def test_a_table_owner_who_unsets_security_definer_gets_no_superuser_flush(
    dsn: str, conn: psycopg.Connection, app_owner: str
) -> None:
    """Issue 19 #1: the owner of workspace_agents owns the merge functions and turns one into
    SECURITY INVOKER; a superuser's flush (CALL, `pybatch flush`, the one-transaction path) then
    refuses instead of firing the owner's trigger as superuser, and `pybatch migrate` repairs it."""
    migrate.apply(conn)
    with as_role(dsn, app_owner) as owner:
        owner.execute(sql.SQL(LOGGING_TRIGGER))
        owner.execute("ALTER FUNCTION pybatch.flush_pass(pybatch.flush_result) SECURITY INVOKER")
    agents = make_agents(conn, 3)
    stage_all(conn, agents, datetime.now(UTC) - timedelta(seconds=2))
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match=r"flush_pass.*no longer SECURITY DEFINER"):
        conn.execute("CALL pybatch.flush_in_passes()")
    with pytest.raises(PybatchError, match="pybatch migrate"):
        flush(conn)
    refused = run_pybatch("flush", "--dsn", dsn)
    assert refused.returncode == 1 and "no longer SECURITY DEFINER" in refused.stderr, refused
    assert one(conn, "SELECT count(*) FROM public.trigger_ran_as") == 0
    assert one(conn, "SELECT count(*) FROM pybatch.heartbeats") == 3  # nothing lost

    migrate.apply(conn)  # restores SECURITY DEFINER (the routine drifted from its source)
    assert flush(conn).agents_updated == 3
    assert conn.execute("SELECT DISTINCT who, superuser FROM public.trigger_ran_as").fetchall() == [(app_owner, False)]


def test_after_the_table_changes_hands_nothing_runs_as_the_previous_owner(dsn: str, conn: psycopg.Connection) -> None:
    """Issue 19 #3: migrate ran while a superuser owned the table, then it changed hands. Until
    `pybatch migrate` runs again, the flusher's flush and a writer's disconnect refuse (they would
    fire the new owner's trigger as the superuser who still owns the functions)."""
    with login_role(conn, "newowner") as new_owner, login_role(conn, "flusher") as flusher:
        from pybatch.grants import Grant, grant

        grant(conn, Grant.FLUSHER, flusher)
        grant(conn, Grant.WRITER, flusher)
        conn.execute(sql.SQL("ALTER TABLE public.workspace_agents OWNER TO {}").format(sql.Identifier(new_owner)))
        conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(new_owner)))
        with as_role(dsn, new_owner) as owner:
            owner.execute(sql.SQL(LOGGING_TRIGGER))
        agents = make_agents(conn, 2)
        stage_all(conn, agents, datetime.now(UTC) - timedelta(seconds=2))
        with as_role(dsn, flusher) as f:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="owned by postgres, not by"):
                f.execute("CALL pybatch.flush_in_passes()")
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match=r"owned by postgres.*pybatch migrate"):
                f.execute("SELECT pybatch.disconnect(%s)", (agents[0],))
        assert one(conn, "SELECT count(*) FROM public.trigger_ran_as") == 0
        checks = {c.name: c for c in doctor(conn).checks}
        assert checks["merge_owner"].level == FAIL and "owned by postgres" in checks["merge_owner"].message

        migrate.apply(conn)  # gives the merge functions to the new owner
        with as_role(dsn, flusher) as f:
            f.execute("CALL pybatch.flush_in_passes()")
            assert f.execute("SELECT pybatch.disconnect(%s)", (agents[0],)).fetchone() == (True,)
        ran_as = conn.execute("SELECT DISTINCT who, superuser FROM public.trigger_ran_as").fetchall()
        assert ran_as == [(new_owner, False)]
        conn.execute("DROP TABLE public.trigger_ran_as")
        conn.execute("DROP FUNCTION public.log_runner() CASCADE")
        conn.execute("ALTER TABLE public.workspace_agents OWNER TO postgres")
        migrate.apply(conn)
