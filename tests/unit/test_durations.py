from __future__ import annotations

from datetime import timedelta

import pytest

from pybatch.durations import DurationTooLong, format_duration, parse_duration, parse_timedelta
from pybatch.errors import InvalidDuration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("10s", 10.0),
        ("1m", 60.0),
        ("2h", 7200.0),
        ("7d", 604800.0),
        ("15", 15.0),
        ("2.5", 2.5),
        (" 3s ", 3.0),
        ("1.5d", 129600.0),
        (7, 7.0),
        (timedelta(seconds=4), 4.0),
    ],
)
def test_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    [
        "",
        "ten",
        "10 sec",
        "-1s",
        "0",
        "0s",
        "1w",
        "nan",
        "inf",
        "1e3",
        True,
        None,
        # Only ASCII digits: Python's int()/float() and regex \d accept all of these.
        "١٢s",
        "１０s",
        "1_000",
        "1_0s",
        "²s",
        "+5s",
    ],
)
def test_rejects_naming_the_value(text: object) -> None:
    with pytest.raises(InvalidDuration, match="interval") as info:
        parse_duration(text, name="interval")  # type: ignore[arg-type]
    assert repr(text) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_huge_values_are_a_clear_error_not_an_overflow() -> None:
    with pytest.raises(DurationTooLong, match=r"'99999999999999999999h' is too long"):
        parse_duration("99999999999999999999h", name="interval")
    with pytest.raises(InvalidDuration, match="finer than a microsecond"):
        parse_timedelta("0.0000001s")


def test_zero_only_where_allowed() -> None:
    assert parse_timedelta("0", allow_zero=True) == timedelta(0)
    assert parse_timedelta("0ms", allow_zero=True) == timedelta(0)
    with pytest.raises(InvalidDuration, match="positive"):
        parse_timedelta("0s")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.5, "500ms"),
        (10, "10s"),
        (60, "1m"),
        (90, "90s"),
        (3600, "1h"),
        (5400, "90m"),
        (86400, "1d"),
        (604800, "7d"),
        (1.5, "1.5s"),
        (0.0015, "1.5ms"),
        (12345.678, "12345.678s"),
        (0, "0s"),
    ],
)
def test_format(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert format_duration(timedelta(seconds=seconds)) == text
    if seconds:
        assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "value",
    [
        timedelta(days=7),
        timedelta(seconds=10),
        timedelta(days=3650),
        timedelta(microseconds=1),
        timedelta(hours=1, microseconds=7),
        timedelta(seconds=86399, microseconds=999999),
        timedelta(days=1, seconds=1),
    ],
)
def test_format_round_trips_exactly(value: timedelta) -> None:
    assert parse_timedelta(format_duration(value)) == value
