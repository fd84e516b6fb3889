"""Crashes and faults against a real server: kill -9 of the postmaster under load, a flush that
fails half-way under the scheduler, clients cut off mid-COPY."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from pybatch.errors import LocalClusterError, PybatchError
from pybatch.flush import flush
from pybatch.local import LocalCluster
from pybatch.schedule.scheduler import Scheduler

FLUSH_INTERVAL = 0.5  # seconds; the scheduler's interval in these tests


def count(conn: psycopg.Connection, query: str, params: tuple[object, ...] = ()) -> int:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return int(row[0])


def wait_for(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def start_scheduler(dsn: str) -> tuple[Scheduler, threading.Thread]:
    scheduler = Scheduler(dsn, interval=FLUSH_INTERVAL)
    thread = threading.Thread(target=scheduler.run, name="scheduler", daemon=True)
    thread.start()
    return scheduler, thread


def restart_after_crash(cluster: LocalCluster) -> None:
    """Start again; backends orphaned by the kill may hold shared memory for a moment."""
    deadline = time.monotonic() + 60
    while True:
        try:
            cluster.start()
            return
        except LocalClusterError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


class Writers:
    """Writer threads that COPY beats stamped with the client clock, each agent owned by one
    thread (so per agent, beats are in time order), recording when each commit returned.
    On a database error they wait for `resume` and reconnect."""

    def __init__(self, dsn: str, agents: list[uuid.UUID], threads: int = 2) -> None:
        self.dsn = dsn
        self.shares = [agents[i::threads] for i in range(threads)]
        self.committed: list[tuple[uuid.UUID, datetime, float]] = []  # (agent, beat_at, commit returned)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.resume = threading.Event()
        self.failures = 0
        self.threads = [threading.Thread(target=self.run, args=(share,), daemon=True) for share in self.shares]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        self.stop.set()
        self.resume.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def run(self, share: list[uuid.UUID]) -> None:
        batch = 25
        position = 0
        while not self.stop.is_set():
            try:
                with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn:
                    while not self.stop.is_set():
                        agents = [share[(position + i) % len(share)] for i in range(batch)]
                        at = datetime.now(UTC)
                        with (
                            conn.cursor() as cur,
                            cur.copy("COPY pybatch.heartbeats (agent_id, beat_at) FROM STDIN") as cp,
                        ):
                            for agent in agents:
                                cp.write_row((agent, at))
                        returned = time.time()
                        with self.lock:
                            self.committed.extend((agent, at, returned) for agent in agents)
                        position += batch
                        time.sleep(0.005)
            except psycopg.Error:
                with self.lock:
                    self.failures += 1
                self.resume.wait()


@pytest.mark.slow
def test_kill_9_postmaster_under_load(own_cluster: LocalCluster) -> None:
    dsn = own_cluster.url()
    agents = [uuid.uuid4() for _ in range(400)]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO public.workspace_agents (id) SELECT unnest(%s::uuid[])", (agents,))
    writers = Writers(dsn, agents)
    scheduler, scheduler_thread = start_scheduler(dsn)
    writers.start()
    try:
        # Under load before the kill: a flush has merged beats, and the writers keep committing.
        with psycopg.connect(dsn, autocommit=True) as watcher:
            wait_for(
                lambda: (
                    count(watcher, "SELECT count(*) FROM pybatch.flush_log WHERE error IS NULL AND rows_staged > 0")
                    >= 2
                ),
                60,
                "two flushes that merged beats",
            )
        with writers.lock:
            committed_then = len(writers.committed)
        wait_for(lambda: len(writers.committed) >= committed_then + 100, 30, "the writers to keep committing")
        postmaster_pid = int((own_cluster.datadir / "postmaster.pid").read_text().splitlines()[0])
        killed_at = time.time()
        os.kill(postmaster_pid, signal.SIGKILL)
        wait_for(lambda: writers.failures >= len(writers.threads), 30, "every writer to see the crash")
        with writers.lock:
            before_crash = list(writers.committed)
        restart_after_crash(own_cluster)
        # Backends outlive a killed postmaster for a moment, so a COPY can still commit (and
        # be acknowledged) after the kill; crash recovery then empties staging all the same.
        # Only what is written once the new server runs is "after the restart".
        restarted_at = time.time()

        with psycopg.connect(dsn, autocommit=True) as conn:
            # Staging is UNLOGGED: crash recovery empties it; workspace_agents is intact.
            assert count(conn, "SELECT count(*) FROM pybatch.heartbeats") == 0
            assert count(conn, "SELECT count(*) FROM public.workspace_agents") == len(agents)
            merged: dict[uuid.UUID, datetime | None] = dict(
                conn.execute("SELECT id, last_connected_at FROM public.workspace_agents").fetchall()
            )
            last_ok = conn.execute(
                "SELECT extract(epoch FROM max(started_at))::float8 FROM pybatch.flush_log "
                "WHERE error IS NULL AND rows_staged > 0"
            ).fetchone()
        assert last_ok is not None and last_ok[0] is not None
        last_flush_started = float(last_ok[0])

        beats_by_agent: dict[uuid.UUID, set[datetime]] = {}
        for agent, at, _ in before_crash:
            beats_by_agent.setdefault(agent, set()).add(at)
        # Intact: every stored time is a beat that was really committed.
        assert all(merged[a] is None or merged[a] in beats_by_agent.get(a, set()) for a in agents)
        lost = [
            (agent, at, returned)
            for agent, at, returned in before_crash
            if (stored := merged[agent]) is None or at > stored
        ]
        # Only beats committed after the last flush began can be lost (it drained everything before),
        # and that flush began within one interval (plus a flush's duration) of the crash.
        assert all(returned >= last_flush_started for _, _, returned in lost)
        assert killed_at - last_flush_started < FLUSH_INTERVAL + 1.0
        window = [b for b in before_crash if b[2] >= killed_at - FLUSH_INTERVAL]
        rate = len(before_crash) / (killed_at - before_crash[0][2])
        print(
            f"\nkill -9: {len(before_crash)} beats committed before the crash ({rate:.0f}/s); "
            f"lost {len(lost)} (one {FLUSH_INTERVAL}s interval = {rate * FLUSH_INTERVAL:.0f} beats; "
            f"committed in the last interval: {len(window)}); last flush began "
            f"{killed_at - last_flush_started:.2f}s before the kill"
        )

        # The scheduler and the writers resume by themselves; everything written after is merged.
        writers.resume.set()

        def every_agent_beat_again() -> bool:
            """Each agent has a beat committed after the restart: what the crash lost is superseded."""
            with writers.lock:
                return len({a for a, _, returned in writers.committed if returned > restarted_at}) == len(agents)

        wait_for(every_agent_beat_again, 60, "a beat from every agent after the restart")
        writers.stop.set()
        writers.join()
        with psycopg.connect(dsn, autocommit=True) as conn:
            wait_for(
                lambda: (
                    count(
                        conn,
                        "SELECT (SELECT count(*) FROM pybatch.heartbeats) + (SELECT count(*) FROM pybatch.pending)",
                    )
                    == 0
                ),
                20,
                "the scheduler to drain staging and merge everything after the restart",
            )
            assert (
                count(
                    conn,
                    "SELECT count(*) FROM pybatch.flush_log WHERE error IS NULL AND rows_staged > 0 "
                    "AND started_at > to_timestamp(%s)",
                    (killed_at,),
                )
                >= 1
            )
            # Nothing set aside either (a failure judged an agent's own would quarantine its beats).
            quarantined = conn.execute("SELECT agent_id, error FROM pybatch.quarantine").fetchall()
            assert quarantined == [], quarantined
            final: dict[uuid.UUID, datetime | None] = dict(
                conn.execute("SELECT id, last_connected_at FROM public.workspace_agents").fetchall()
            )
        newest: dict[uuid.UUID, datetime] = {}
        for agent, at, _ in writers.committed:
            newest[agent] = max(at, newest.get(agent, at))
        after_restart = {a for a, _, returned in writers.committed if returned > restarted_at}
        assert after_restart, "writers did not resume"
        assert {a: final[a] for a in newest} == newest
    finally:
        writers.join()
        scheduler.request_stop()
        scheduler_thread.join(timeout=30)


def test_flush_failing_once_is_retried_by_the_scheduler(dsn: str, conn: psycopg.Connection) -> None:
    agents = [uuid.uuid4() for _ in range(20)]
    conn.execute("INSERT INTO public.workspace_agents (id) SELECT unnest(%s::uuid[])", (agents,))
    # nextval() is not rolled back with the failed flush, so the trigger raises exactly once.
    conn.execute("""
        CREATE SEQUENCE public.fail_once_seq;
        CREATE FUNCTION public.fail_once() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            -- Twenty small rows share a page, so each pass has one: every pass and its
            -- one-agent retry fail (2 x 20 calls), nothing merges, and the flush fails as a
            -- whole. (One agent failing alone while others merge goes to quarantine instead.)
            IF nextval('public.fail_once_seq') <= 40 THEN RAISE EXCEPTION 'injected half-way failure'; END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER fail_once BEFORE UPDATE ON public.workspace_agents
            FOR EACH ROW EXECUTE FUNCTION public.fail_once();
    """)
    at = datetime(2026, 1, 1, tzinfo=UTC)
    with conn.cursor() as cur, cur.copy("COPY pybatch.heartbeats (agent_id, beat_at) FROM STDIN") as cp:
        for agent in agents:
            cp.write_row((agent, at))
    scheduler, thread = start_scheduler(dsn)
    try:
        wait_for(
            lambda: (
                count(conn, "SELECT (SELECT count(*) FROM pybatch.heartbeats) + (SELECT count(*) FROM pybatch.pending)")
                == 0
            ),
            20,
            "the retry to merge",
        )
    finally:
        scheduler.request_stop()
        thread.join(timeout=30)
    log = conn.execute(
        "SELECT error, rows_staged, agents_updated FROM pybatch.flush_log "
        "WHERE error IS NOT NULL OR agents_updated > 0 ORDER BY id"
    ).fetchall()
    # The failed flush handed the 20 beats off and merged none; the next merged them all.
    assert log[0][0] is not None and "injected half-way failure" in log[0][0] and log[0][1:] == (20, 0)
    assert log[1] == (None, 0, 20)
    assert count(conn, "SELECT count(*) FROM public.workspace_agents WHERE last_connected_at = %s", (at,)) == 20


def test_copy_cut_off_by_pg_terminate_backend_leaves_no_rows(dsn: str, conn: psycopg.Connection) -> None:
    (agent,) = [uuid.uuid4()]
    conn.execute("INSERT INTO public.workspace_agents (id) VALUES (%s)", (agent,))
    conn.execute("INSERT INTO pybatch.heartbeats (agent_id, beat_at) VALUES (%s, '2026-01-01')", (agent,))
    with psycopg.connect(dsn, autocommit=True) as victim:
        pid = victim.info.backend_pid
        with (
            pytest.raises(psycopg.OperationalError),
            victim.cursor() as cur,
            cur.copy("COPY pybatch.heartbeats (agent_id, beat_at) FROM STDIN") as cp,
        ):
            for _ in range(20_000):  # large enough that psycopg has sent part of it
                cp.write_row((agent, "2026-01-02"))
            wait_for(
                lambda: (
                    count(conn, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND query LIKE 'COPY%%'", (pid,))
                    == 1
                ),
                10,
                "the COPY to start",
            )
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
            wait_for(
                lambda: count(conn, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)) == 0,
                10,
                "the backend to exit",
            )
            for _ in range(20_000):
                cp.write_row((agent, "2026-01-02"))
    assert count(conn, "SELECT count(*) FROM pybatch.heartbeats") == 1
    result = flush(conn)
    assert result.ok and result.rows_staged == 1 and result.agents_updated == 1


COPY_FOREVER = """
import sys, time, psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as conn, conn.cursor() as cur:
    with cur.copy("COPY pybatch.heartbeats (agent_id, beat_at) FROM STDIN") as cp:
        for _ in range(5000):
            cp.write_row((sys.argv[2], "2026-01-02"))
        print("copying", flush=True)
        time.sleep(600)
"""


def test_client_killed_mid_copy_leaves_no_rows(dsn: str, conn: psycopg.Connection) -> None:
    agent = uuid.uuid4()
    conn.execute("INSERT INTO public.workspace_agents (id) VALUES (%s)", (agent,))
    conn.execute("INSERT INTO pybatch.heartbeats (agent_id, beat_at) VALUES (%s, '2026-01-01')", (agent,))
    client = subprocess.Popen([sys.executable, "-c", COPY_FOREVER, dsn, str(agent)], stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdout is not None and client.stdout.readline().strip() == "copying"
        wait_for(
            lambda: (
                count(
                    conn,
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND query LIKE 'COPY pybatch%%'",
                )
                == 1
            ),
            10,
            "the COPY to be active",
        )
        client.send_signal(signal.SIGKILL)
        client.wait(timeout=10)
    finally:
        if client.poll() is None:
            client.kill()
    wait_for(
        lambda: (
            count(
                conn,
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND query LIKE 'COPY pybatch%%'",
            )
            == 0
        ),
        10,
        "the orphaned backend to exit",
    )
    assert count(conn, "SELECT count(*) FROM pybatch.heartbeats") == 1
    result = flush(conn)
    assert result.ok and result.rows_staged == 1 and result.agents_updated == 1


def test_catch_up_is_capped_per_pass_and_the_scheduler_repeats_at_once(dsn: str, conn: psycopg.Connection) -> None:
    """After an outage, one pass drains at most settings.max_rows_per_flush and the rest stays;
    the scheduler then flushes again at once instead of waiting an interval per cap."""
    agents = [uuid.uuid4() for _ in range(1000)]
    conn.execute("INSERT INTO public.workspace_agents (id) SELECT unnest(%s::uuid[])", (agents,))
    conn.execute(
        """
        INSERT INTO pybatch.heartbeats (agent_id, beat_at)
        SELECT a, '2026-01-01'::timestamptz + make_interval(secs => k * 15)
        FROM unnest(%s::uuid[]) a, generate_series(0, 9) k
    """,
        (agents,),
    )
    conn.execute("UPDATE pybatch.settings SET max_rows_per_flush = 3000")
    first = flush(conn)  # no max_rows: the settings cap applies
    assert first.ok and first.rows_staged == 3000
    assert count(conn, "SELECT count(*) FROM pybatch.heartbeats") == 7000
    scheduler = Scheduler(dsn, interval=60)  # an interval far longer than the test
    thread = threading.Thread(target=scheduler.run, daemon=True)
    thread.start()
    try:
        wait_for(
            lambda: count(conn, "SELECT count(*) FROM pybatch.heartbeats") == 0,
            20,
            "back-to-back capped passes to drain the backlog",
        )
    finally:
        scheduler.request_stop()
        thread.join(timeout=30)
    passes = conn.execute("SELECT rows_staged FROM pybatch.flush_log WHERE rows_staged > 0 ORDER BY id").fetchall()
    assert [p[0] for p in passes] == [3000, 3000, 3000, 1000]
    assert (
        count(
            conn,
            "SELECT count(*) FROM public.workspace_agents WHERE last_connected_at = "
            "'2026-01-01'::timestamptz + interval '135 seconds'",
        )
        == 1000
    )


def test_kill_9_between_passes_keeps_merged_passes_and_loses_at_most_the_interval(
    own_cluster: LocalCluster,
) -> None:
    """A crash in the middle of a committed-pass flush: the passes that committed stand, the
    hand-off (UNLOGGED, like staging) is emptied by crash recovery, nothing is half-applied, and
    the next interval's beats bring every agent up to date."""
    dsn = own_cluster.url()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE public.workspace_agents ADD COLUMN filler text NOT NULL DEFAULT repeat('x', 300)")
        conn.execute("ALTER TABLE public.workspace_agents SET (fillfactor = 100)")
        agents = [uuid.uuid4() for _ in range(400)]  # ~20 per page: ~20 passes
        conn.execute("INSERT INTO public.workspace_agents (id) SELECT unnest(%s::uuid[])", (agents,))
        conn.execute("VACUUM FULL public.workspace_agents")
        conn.execute("""
            CREATE FUNCTION public.slow() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN PERFORM pg_sleep(0.005); RETURN NEW; END $$;
            CREATE TRIGGER slow BEFORE UPDATE ON public.workspace_agents FOR EACH ROW EXECUTE FUNCTION public.slow();
        """)
        first_beat = datetime.now(UTC)  # after every row's updated_at
        conn.execute(
            "INSERT INTO pybatch.heartbeats (agent_id, beat_at) SELECT unnest(%s::uuid[]), %s", (agents, first_beat)
        )

    def run_flush() -> None:
        with contextlib.suppress(psycopg.Error, PybatchError), psycopg.connect(dsn, autocommit=True) as c:
            flush(c)

    flusher = threading.Thread(target=run_flush)
    flusher.start()
    with psycopg.connect(dsn, autocommit=True) as watcher:
        wait_for(
            lambda: (
                count(watcher, "SELECT count(*) FROM public.workspace_agents WHERE last_connected_at IS NOT NULL") >= 60
            ),
            30,
            "a few passes",
        )
        pending_at_kill = count(watcher, "SELECT count(*) FROM pybatch.pending")
    postmaster_pid = int((own_cluster.datadir / "postmaster.pid").read_text().splitlines()[0])
    os.kill(postmaster_pid, signal.SIGKILL)
    flusher.join(timeout=30)
    restart_after_crash(own_cluster)
    assert pending_at_kill > 0, "the kill came after the flush: the test proves nothing"
    with psycopg.connect(dsn, autocommit=True) as conn:
        merged = count(conn, "SELECT count(*) FROM public.workspace_agents WHERE last_connected_at IS NOT NULL")
        assert 60 <= merged < len(agents)
        # Each agent is either merged whole or untouched: nothing half-applied.
        assert (
            count(
                conn,
                "SELECT count(*) FROM public.workspace_agents WHERE last_connected_at IS NOT NULL"
                " AND (last_connected_at <> %s OR first_connected_at <> %s OR updated_at <> %s)",
                (first_beat, first_beat, first_beat),
            )
            == 0
        )
        assert count(conn, "SELECT count(*) FROM pybatch.pending") == 0  # UNLOGGED: emptied by recovery
        # The next interval's beats restore every agent.
        next_beat = first_beat + timedelta(seconds=15)
        conn.execute(
            "INSERT INTO pybatch.heartbeats (agent_id, beat_at) SELECT unnest(%s::uuid[]), %s", (agents, next_beat)
        )
        result = flush(conn)
        assert result.ok and result.agents_updated == len(agents)
        assert count(
            conn, "SELECT count(*) FROM public.workspace_agents WHERE last_connected_at = %s", (next_beat,)
        ) == len(agents)
