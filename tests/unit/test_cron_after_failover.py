"""cron.diagnose after a restart or failover: a run interrupted by it is passed over, a failure
older than the last successful flush is history, and a job that names another node is named."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from pybatch.schedule import cron
from pybatch.schedule.cron import CronJob, CronRun, CronStatus

AT = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def _job(nodename: str = "/run/pg", nodeport: int = 5432) -> CronJob:
    return CronJob(1, "pybatch-flush-app", "5 seconds", cron.FLUSH_COMMAND, "app", "alice", True, nodename, nodeport)


def _run(runid: int, status: str, message: str | None, at: datetime = AT) -> CronRun:
    return CronRun(runid, status, message, at, at)


def _status(*runs: CronRun, job: CronJob | None = None, last_flush_at: datetime | None = None) -> CronStatus:
    return CronStatus(
        "app",
        "postgres",
        "1.6",
        5.0,
        job or _job(),
        None,
        list(runs),
        last_flush_at=last_flush_at,
        server_node=("/run/pg", 5432),
    )


def test_a_run_the_restart_interrupted_is_passed_over() -> None:
    state = _status(_run(9, "failed", "server restarted"), _run(8, "succeeded", "CALL"))
    assert cron.diagnose(state, None) is None
    only = _status(_run(9, "failed", "server restarted"))
    assert cron.diagnose(only, None) is None


def test_a_failure_before_the_last_successful_flush_is_history() -> None:
    failed = _run(9, "failed", "ERROR: canceling statement due to statement timeout")
    assert cron.diagnose(_status(failed, last_flush_at=AT + timedelta(seconds=5)), None) is None
    error = cron.diagnose(_status(failed, last_flush_at=AT - timedelta(seconds=5)), None)
    assert error is not None and "statement timeout" in str(error)


def test_a_job_naming_another_node_is_named_before_its_connection_failures() -> None:
    state = _status(_run(9, "failed", "connection failed"), job=_job("/run/old", 6543))
    error = cron.diagnose(state, "/run/pg")
    assert error is not None
    text = str(error)
    assert "/run/old:6543" in text and "/run/pg:5432" in text and "`pybatch cron install`" in text
    assert "pg_hba" not in text
    # Jobs that run as background workers open no connection: the node they name does not matter.
    workers = dataclasses.replace(state, background_workers=True)
    workers_error = cron.diagnose(workers, "/run/pg")
    assert workers_error is not None and "/run/old" not in str(workers_error)
