"""Pure-Python parts of pybatch.schedule.cron: interval planning, versions, diagnosis."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pybatch.errors import CronError
from pybatch.schedule import cron
from pybatch.schedule.cron import CronJob, CronRun, CronStatus

OLD, NEW = (1, 4), (1, 6)


@pytest.mark.parametrize(("text", "version"), [("1.4-1", (1, 4)), ("1.5", (1, 5)), ("1.6.5", (1, 6)), ("2.0", (2, 0))])
def test_parse_version(text: str, version: tuple[int, int]) -> None:
    assert cron.parse_version(text) == version


def test_parse_version_rejects_garbage() -> None:
    with pytest.raises(CronError, match="'dev'"):
        cron.parse_version("dev")


def test_old_pg_cron_gets_the_minute_loop() -> None:
    plan = cron.plan_job(10, OLD)
    assert plan.mode == "loop"
    assert plan.schedule == "* * * * *"
    assert plan.command == "CALL pybatch.flush_loop('10 seconds')"


def test_new_pg_cron_gets_a_seconds_schedule_unless_the_loop_is_forced() -> None:
    assert cron.plan_job(5, NEW) == cron.JobPlan("seconds", "5 seconds", cron.FLUSH_COMMAND)
    assert cron.plan_job(5, NEW, force_loop=True).mode == "loop"
    assert cron.plan_job(59, (1, 5)).schedule == "59 seconds"


@pytest.mark.parametrize(
    ("seconds", "schedule"), [(60, "* * * * *"), (120, "*/2 * * * *"), (900, "*/15 * * * *"), (3600, "0 * * * *")]
)
def test_whole_minutes_dividing_an_hour_use_a_cron_schedule(seconds: float, schedule: str) -> None:
    for version in (OLD, NEW):
        plan = cron.plan_job(seconds, version, force_loop=True)
        assert (plan.mode, plan.schedule, plan.command) == ("minutes", schedule, cron.FLUSH_COMMAND)


@pytest.mark.parametrize("seconds", [0.5, 1.5, 90, 420, 7200, 0])
def test_inexpressible_intervals_are_rejected_naming_the_interval(seconds: float) -> None:
    with pytest.raises(CronError) as err:
        cron.check_interval(seconds)
    message = str(err.value)
    assert "cannot be expressed by pg_cron" in message
    assert "or run `pybatch scheduler`" in message
    assert "\n" not in message


def test_job_names_follow_the_database() -> None:
    assert cron.flush_job_name("app") == "pybatch-flush-app"
    assert cron.purge_job_name("app") == "pybatch-purge-app"


def test_purge_schedule_is_hourly_and_stable_per_database() -> None:
    first = cron.purge_schedule("app")
    assert first == cron.purge_schedule("app")
    minute, *rest = first.split()
    assert rest == ["*", "*", "*", "*"] and 0 <= int(minute) < 60


def _job(command: str = "CALL pybatch.flush_loop('10 seconds')", schedule: str = "* * * * *") -> CronJob:
    return CronJob(1, "pybatch-flush-app", schedule, command, "app", "alice", True)


def test_job_mode_is_read_from_schedule_and_command() -> None:
    assert _job().mode == "loop"
    assert _job(cron.FLUSH_COMMAND, "5 seconds").mode == "seconds"
    assert _job(cron.FLUSH_COMMAND, "*/2 * * * *").mode == "minutes"


def _status(*runs: CronRun) -> CronStatus:
    return CronStatus("app", "postgres", "1.4-1", 10.0, _job(), None, list(runs))


def _run(runid: int, status: str, message: str | None) -> CronRun:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    return CronRun(runid, status, message, at, at)


def test_diagnose_reports_a_refused_job_connection_as_pg_hba() -> None:
    error = cron.diagnose(_status(_run(7, "failed", "connection failed"), _run(6, "succeeded", "CALL")), "/run/pg")
    assert error is not None
    text = str(error)
    assert "pg_hba.conf" in text and "alice" in text and "/run/pg" in text and "run 7" in text
    assert text.endswith("or run `pybatch scheduler`")


def test_diagnose_reports_other_failures_with_their_message() -> None:
    error = cron.diagnose(_status(_run(3, "failed", "ERROR: permission denied for procedure flush_loop")), None)
    assert error is not None and "permission denied for procedure flush_loop" in str(error)


def test_diagnose_is_quiet_when_the_newest_finished_run_succeeded() -> None:
    assert (
        cron.diagnose(
            _status(_run(9, "running", None), _run(8, "succeeded", "CALL"), _run(7, "failed", "connection failed")),
            None,
        )
        is None
    )
    assert cron.diagnose(_status(), None) is None


def test_cron_install_says_when_the_first_run_comes() -> None:
    from datetime import UTC, datetime

    from pybatch.cli.schedule import first_run_note

    now = datetime(2026, 12, 2, 13, 37, 20, 500000, tzinfo=UTC)
    assert first_run_note("seconds", "5 seconds", 5, now).startswith("first run: within 5s")
    loop = first_run_note("loop", "* * * * *", 10, now)
    assert "at 13:38:00 UTC, in 40s" in loop and "every 10s" in loop
    assert "at 13:40:00 UTC, in 160s" in first_run_note("minutes", "*/5 * * * *", 300, now)
    assert "at 14:00:00 UTC" in first_run_note("minutes", "0 * * * *", 3600, now)
    on_the_minute = datetime(2026, 12, 2, 13, 37, 0, tzinfo=UTC)
    assert "at 13:38:00 UTC, in 60s" in first_run_note("minutes", "* * * * *", 60, on_the_minute)
