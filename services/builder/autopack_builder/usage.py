"""Periods for GetUsage: "" (everything) or a duration such as "30m", "24h", "7d", "2w"."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from autopack_common.errors import InvalidArgument

_PERIOD = re.compile(r"^\s*(\d+)\s*([mhdw])\s*$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_period(period: str, now: datetime | None = None) -> datetime | None:
    """The start of the period ending now; None for everything."""
    if not period.strip():
        return None
    match = _PERIOD.match(period.lower())
    if match is None or int(match.group(1)) <= 0:
        raise InvalidArgument("period", f"{period!r}: use a positive duration like 30m, 24h, 7d or 2w")
    delta = timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    return (now or datetime.now(UTC)) - delta
