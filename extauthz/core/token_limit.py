"""LLM token limits, pure (docs/llm.md): the `N/UNIT` notation and the windows they count
in (what a request reserves is its bound: core/llm.py `LlmRequest.bound`).

A token limit allows at most N LLM tokens (prompt + completion) per window of its unit:
`m`, `h`, `d` aligned to the UTC epoch, or `mo`, the UTC calendar month. The token's own
limit (record field `token_limit`) counts per token; a route's (policy `token_limit`) per
caller on that route, as a route's `rate_limit` does (core/limits.py). The counting, shared
by every process through Redis, is runtime/limiter.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from extauthz.core.rate_limit import parse_notation

_FIXED_SECONDS = {"m": 60, "h": 3600, "d": 86400}
UNITS = ("m", "h", "d", "mo")
MAX_COUNT = 10**15 - 1
RULE = (
    f"use N/UNIT, e.g. 100000/d: N LLM tokens, a whole number from 1 to {MAX_COUNT} "
    "(digits 0-9), per m, h, d or mo (month)"
)
ZERO_RULE = "0 would refuse every LLM request (it does not mean no limit): leave the limit out"


@dataclass(frozen=True, slots=True)
class TokenLimit:
    """At most `count` LLM tokens per window of `unit` (m, h, d or mo)."""

    count: int
    unit: str

    @classmethod
    def parse(cls, text: str) -> TokenLimit:
        """`100000/d` → TokenLimit(100000, "d"); ZeroLimit for `0/d`, ValueError (message:
        RULE) otherwise."""
        return cls(*parse_notation(text, UNITS, MAX_COUNT, RULE, ZERO_RULE))

    def window(self, now: float) -> tuple[int, float, float]:
        """The window `now` falls in: its index, its first second and the first after it."""
        return calendar_window(self.unit, now)

    def __str__(self) -> str:
        return f"{self.count}/{self.unit}"


def calendar_window(unit: str, now: float) -> tuple[int, float, float]:
    """The window of `unit` (m, h, d aligned to the UTC epoch; mo: the UTC calendar month)
    `now` falls in: its index, its first second and the first after it."""
    seconds = _FIXED_SECONDS.get(unit)
    if seconds is not None:
        index = int(now // seconds)
        return index, float(index * seconds), float((index + 1) * seconds)
    day = datetime.fromtimestamp(now, UTC)
    index = day.year * 12 + day.month - 1
    return index, _month_start(index), _month_start(index + 1)


def _month_start(index: int) -> float:
    year, month = divmod(index, 12)
    return datetime(year, month + 1, 1, tzinfo=UTC).timestamp()
