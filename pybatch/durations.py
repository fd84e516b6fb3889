"""Durations are written one way everywhere: `500ms`, `10s`, `1m`, `2h`, `7d`, or a plain number of seconds.

Only ASCII digits count (no Unicode digits, no `_` separators, no exponents). format_duration
writes the same notation, so what pybatch prints can be typed back in.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta
from decimal import Decimal, InvalidOperation

from pybatch.errors import InvalidDuration

_UNITS = {"ms": Decimal("0.001"), "s": Decimal(1), "m": Decimal(60), "h": Decimal(3600), "d": Decimal(86400)}
# [0-9] rather than \d: \d matches every Unicode digit ('١٢s' would parse).
_PATTERN = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)?\s*$")
# timedelta's own ceiling is 999999999 days; anything beyond is not a duration anyone means.
MAX_SECONDS = Decimal(timedelta.max.days) * 86400


class DurationTooLong(InvalidDuration):
    """A well-formed duration beyond what a timedelta holds (999999999 days)."""


HINT = "use e.g. 500ms, 10s, 1m, 2h, 7d or plain seconds"


def _label(name: str) -> str:
    return f"{name}: " if name else ""


def parse_timedelta(
    text: str | float | int | timedelta, *, name: str = "duration", allow_zero: bool = False
) -> timedelta:
    """The duration as an exact timedelta (microseconds); InvalidDuration names the value otherwise.

    Zero is refused unless allow_zero; negative, non-finite and absurdly large values always are.
    """
    if isinstance(text, timedelta):
        value = text
    else:
        seconds = _seconds(text, name)
        if seconds > MAX_SECONDS:
            raise DurationTooLong(f"{_label(name)}{text!r} is too long (at most {timedelta.max.days} days)")
        scaled = seconds * 1_000_000
        micros = int(scaled.to_integral_value())
        if isinstance(text, str) and scaled != micros:
            raise InvalidDuration(f"{_label(name)}{text!r} is finer than a microsecond")
        value = timedelta(microseconds=micros)
    if value < timedelta(0) or (value == timedelta(0) and not allow_zero):
        raise InvalidDuration(f"{_label(name)}{text!r} must be a positive duration")
    return value


def _seconds(text: str | float | int, name: str) -> Decimal:
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise InvalidDuration(f"{_label(name)}{text!r} is not a duration ({HINT})")
    if isinstance(text, (int, float)):
        if not math.isfinite(text):
            raise InvalidDuration(f"{_label(name)}{text!r} must be a positive duration")
        return Decimal(text)
    match = _PATTERN.match(text)
    if not match:
        raise InvalidDuration(f"{_label(name)}{text!r} is not a duration ({HINT})")
    try:
        return Decimal(match.group(1)) * _UNITS[match.group(2) or "s"]
    except InvalidOperation:  # pragma: no cover - the pattern admits only plain decimals
        raise InvalidDuration(f"{_label(name)}{text!r} is not a duration ({HINT})") from None


def well_formed(text: str) -> bool:
    """Whether text is written as a duration (whatever its size): `10s`, `0.00001ms`, `99999d`."""
    return bool(_PATTERN.match(text))


def parse_duration(text: str | float | int | timedelta, *, name: str = "duration") -> float:
    """Return the duration in seconds; raise InvalidDuration naming the value otherwise."""
    return parse_timedelta(text, name=name).total_seconds()


def format_duration(value: float | timedelta) -> str:
    """The inverse of parse_duration: 0.5 -> '500ms', 10 -> '10s', 90 -> '90s', 60 -> '1m',
    3600 -> '1h', 604800 -> '7d', 1.5 -> '1.5s'. Exact to the microsecond, so
    parse_timedelta(format_duration(x)) == x."""
    micros = round(value / timedelta(microseconds=1)) if isinstance(value, timedelta) else round(value * 1_000_000)
    if micros == 0:
        return "0s"
    sign, micros = ("-", -micros) if micros < 0 else ("", micros)
    for unit, size in (("d", 86_400_000_000), ("h", 3_600_000_000), ("m", 60_000_000), ("s", 1_000_000)):
        if micros >= size and micros % size == 0:
            return f"{sign}{micros // size}{unit}"
    if micros < 1_000_000:
        return f"{sign}{_decimal(micros, 1000)}ms"
    return f"{sign}{_decimal(micros, 1_000_000)}s"


def _decimal(micros: int, per_unit: int) -> str:
    """micros / per_unit written exactly, without trailing zeros."""
    whole, rest = divmod(micros, per_unit)
    if not rest:
        return str(whole)
    digits = len(str(per_unit)) - 1
    return f"{whole}.{str(rest).rjust(digits, '0').rstrip('0')}"
