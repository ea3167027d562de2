"""Instants as people and programs write them: ISO-8601 with a UTC offset, or epoch seconds.

The one reading of a time given to the command line (`--at`, `--start`, …) and to the admin API, and the
ISO-8601 form the API returns beside epoch seconds. Pure functions.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

# The zone of the offset a hint suggests when a time is written without one (the French rule pack's).
HINT_ZONE = "Europe/Paris"


def parse_instant(value: object, *, hint_zone: str = HINT_ZONE) -> float:
    """Epoch seconds from epoch seconds (a number, or its text) or ISO-8601 with a UTC offset.

    Raises ValueError with a sentence for the user; a time without an offset is refused, with the
    offset `hint_zone` has on that date as the suggestion (+01:00 in a Paris winter, +02:00 in summer)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected ISO-8601 with a UTC offset or epoch seconds, got {value!r}")
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return _parse_iso(value, hint_zone)
    else:
        number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"expected ISO-8601 with a UTC offset or epoch seconds, got {value!r}")
    return number


def _parse_iso(text: str, hint_zone: str) -> float:
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"not an ISO-8601 date-time or epoch seconds: {text!r}") from None
    if when.tzinfo is None:
        example = when.replace(tzinfo=ZoneInfo(hint_zone)).isoformat()
        raise ValueError(f"add a UTC offset to {text!r}: the callee's time zone matters "
                         f"(e.g. {example}, {hint_zone} time on that date)")
    return when.timestamp()


def iso_utc(at: float | None) -> str | None:
    """`at` as ISO-8601 in UTC, to the second (`2026-12-01T10:00:00Z`); None stays None."""
    if at is None:
        return None
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
