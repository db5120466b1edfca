"""LLM token limits, pure (docs/llm.md): the `N/UNIT` notation and the windows they count
in (what a request reserves is its bound: core/llm.py `LlmRequest.bound`).

A token limit allows at most N LLM tokens (prompt + completion) per window of its unit:
`m`, `h`, `d` aligned to the UTC epoch, or `mo`, the UTC calendar month. The token's own
limit (record field `token_limit`) counts per token; a route's (policy `token_limit`) per
caller on that route, as a route's `rate_limit` does (core/limits.py). The counting, shared
by every process through Redis, is runtime/limiter.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

_NOTATION = re.compile(r"([1-9][0-9]{0,14})/(mo|m|h|d)", re.ASCII)
_FIXED_SECONDS = {"m": 60, "h": 3600, "d": 86400}
RULE = "use N/UNIT: a whole number of LLM tokens per m, h, d or mo (month), e.g. 100000/d"


@dataclass(frozen=True, slots=True)
class TokenLimit:
    """At most `count` LLM tokens per window of `unit` (m, h, d or mo)."""

    count: int
    unit: str

    @classmethod
    def parse(cls, text: str) -> TokenLimit:
        """`100000/d` → TokenLimit(100000, "d"); ValueError (message: RULE) otherwise."""
        m = _NOTATION.fullmatch(text.strip())
        if m is None:
            raise ValueError(RULE)
        return cls(int(m.group(1)), m.group(2))

    def window(self, now: float) -> tuple[int, float, float]:
        """The window `now` falls in: its index, its first second and the first after it."""
        seconds = _FIXED_SECONDS.get(self.unit)
        if seconds is not None:
            index = int(now // seconds)
            return index, float(index * seconds), float((index + 1) * seconds)
        day = datetime.fromtimestamp(now, UTC)
        index = day.year * 12 + day.month - 1
        return index, _month_start(index), _month_start(index + 1)

    def __str__(self) -> str:
        return f"{self.count}/{self.unit}"


def _month_start(index: int) -> float:
    year, month = divmod(index, 12)
    return datetime(year, month + 1, 1, tzinfo=UTC).timestamp()
