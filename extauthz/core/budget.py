"""Money budgets, pure (docs/llm.md#budgets-in-dollars): the `AMOUNT/UNIT` notation.

A budget allows at most AMOUNT US dollars of LLM use (priced by core/prices.py) per window
of its unit: `m`, `h`, `d` aligned to the UTC epoch, or `mo`, the UTC calendar month. It is
counted in whole micro-dollars, reserved and settled like a token limit (core/limits.py
kind MONEY; runtime/limiter.py): the token's own budget (record field `budget`), its team's
(pooled), and a route's (policy `budget`, per caller).
"""

from __future__ import annotations

from dataclasses import dataclass

from extauthz.core.prices import parse_usd, usd_text
from extauthz.core.rate_limit import ZeroLimit
from extauthz.core.token_limit import calendar_window

UNITS = ("m", "h", "d", "mo")
MAX_USD = 10**9
RULE = (
    f"use AMOUNT/UNIT in USD, e.g. 50/mo or $0.25/h: an amount up to {MAX_USD} with at most 6 "
    "decimal places, per m, h, d or mo (UTC calendar month)"
)
ZERO_RULE = "0 would refuse every priced request (it does not mean no budget): leave it out"


@dataclass(frozen=True, slots=True)
class Budget:
    """At most `count` micro-dollars per window of `unit` (m, h, d or mo)."""

    count: int
    unit: str

    @classmethod
    def parse(cls, text: str) -> Budget:
        """`50/mo`, `$0.25/h` → Budget(50000000, "mo"), Budget(250000, "h"); ZeroLimit for an
        amount of 0, ValueError (message: RULE) otherwise."""
        amount, slash, unit = text.strip().removeprefix("$").partition("/")
        if not slash or unit not in UNITS:
            raise ValueError(RULE)
        count = parse_usd(amount, MAX_USD, RULE)
        if count == 0:
            raise ZeroLimit(ZERO_RULE)
        return cls(count, unit)

    def window(self, now: float) -> tuple[int, float, float]:
        """The window `now` falls in: its index, its first second and the first after it."""
        return calendar_window(self.unit, now)

    def __str__(self) -> str:
        return f"${usd_text(self.count)}/{self.unit}"
