"""Durations as people write them: `30s`, `15m`, `1h`, `7d` (token lifetimes, caps, grace)."""

from __future__ import annotations

import re

_DURATION = re.compile(r"([0-9]{1,12})([smhd])", re.ASCII)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_SECONDS = 100 * 365 * 86400  # a century: anything longer is a typo, not a policy
RULE = "use a positive number with s, m, h or d (e.g. 1h), at most 36500d"


def parse_duration(text: str) -> int:
    """Seconds, from 1 to a century; ValueError (with RULE as its message) otherwise."""
    m = _DURATION.fullmatch(text)
    seconds = int(m.group(1)) * _UNIT_SECONDS[m.group(2)] if m else 0
    if not 0 < seconds <= MAX_SECONDS:
        raise ValueError(RULE)
    return seconds


def format_duration(seconds: float) -> str:
    """The largest whole unit: 90d, 36h, 15m, 42s."""
    whole = int(seconds)
    for unit in ("d", "h", "m"):
        if whole >= _UNIT_SECONDS[unit] and whole % _UNIT_SECONDS[unit] == 0:
            return f"{whole // _UNIT_SECONDS[unit]}{unit}"
    return f"{whole}s"
