"""Durations are written one way everywhere: `500ms`, `10s`, `1m`, `2h`, or a plain number of seconds."""

from __future__ import annotations

import math
import re
from datetime import timedelta

from pybatch.errors import InvalidDuration

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


def parse_duration(text: str | float | int | timedelta, *, name: str = "duration") -> float:
    """Return the duration in seconds; raise InvalidDuration naming the value otherwise."""
    if isinstance(text, timedelta):
        seconds = text.total_seconds()
    elif isinstance(text, bool):
        raise InvalidDuration(f"{name}: {text!r} is not a duration (use 500ms, 10s, 1m or seconds)")
    elif isinstance(text, (int, float)):
        seconds = float(text)
    elif isinstance(text, str):
        match = _PATTERN.match(text)
        if not match:
            raise InvalidDuration(f"{name}: {text!r} is not a duration (use 500ms, 10s, 1m or seconds)")
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    else:
        raise InvalidDuration(f"{name}: {text!r} is not a duration (use 500ms, 10s, 1m or seconds)")
    if not math.isfinite(seconds) or seconds <= 0:
        raise InvalidDuration(f"{name}: {text!r} must be a positive duration")
    return seconds


def format_duration(seconds: float) -> str:
    """The inverse of parse_duration, for messages: 0.5 -> '500ms', 10 -> '10s', 60 -> '1m'."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"
