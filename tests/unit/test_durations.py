from __future__ import annotations

from datetime import timedelta

import pytest

from pybatch.durations import format_duration, parse_duration
from pybatch.errors import InvalidDuration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("10s", 10.0), ("1m", 60.0), ("2h", 7200.0), ("15", 15.0), ("2.5", 2.5), (" 3s ", 3.0),
     (7, 7.0), (timedelta(seconds=4), 4.0)],
)
def test_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten", "10 sec", "-1s", "0", "0s", "1d", "nan", "inf", "1e3", True, None])
def test_rejects_naming_the_value(text: object) -> None:
    with pytest.raises(InvalidDuration, match="interval") as info:
        parse_duration(text, name="interval")  # type: ignore[arg-type]
    assert repr(text) in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(("seconds", "text"), [(0.5, "500ms"), (10, "10s"), (60, "1m"), (90, "90s")])
def test_format(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds
