"""Rate limits, pure: the `N/UNIT` notation, which limits an allow is subject to, and the
aligned windows they are counted in.

A limit allows at most N requests in every window of its unit aligned to the UTC epoch
(`600/m`: 12:00:00 to 12:00:59, 12:01:00 to ...). The token's own limit (record field
`rate_limit`) counts per token; a route's limit (policy `rate_limit`) counts per caller on
that route: per token id, JWT subject or route secret id, and per client address where
nobody is named (public routes, private routes seen from inside): core/limits.py. The
counting itself, shared by every process through Redis, is runtime/limiter.py.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

_NOTATION = re.compile(r"([0-9]+)/([a-z]+)", re.ASCII)
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_COUNT = 10**12 - 1
RULE = (
    f"use N/UNIT, e.g. 600/m: N requests, a whole number from 1 to {MAX_COUNT} "
    "(digits 0-9), per s, m, h or d"
)
ZERO_RULE = "0 would refuse every request (it does not mean no limit): leave the limit out"


class ZeroLimit(ValueError):
    """`0/UNIT`: a limit that allows nothing (refused: it reads as "no limit" to some)."""


def parse_notation(
    text: str, units: Iterable[str], maximum: int, rule: str, zero: str
) -> tuple[int, str]:
    """`N/UNIT` (surrounding whitespace ignored) → (N, UNIT) with 1 <= N <= maximum and UNIT
    one of `units`; ZeroLimit (message `zero`) for N = 0, else ValueError (message `rule`)."""
    m = _NOTATION.fullmatch(text.strip())
    if m is None or m.group(2) not in units:
        raise ValueError(rule)
    digits = m.group(1).lstrip("0")
    if not digits:
        raise ZeroLimit(zero)
    if len(digits) > len(str(maximum)) or int(digits) > maximum:
        raise ValueError(rule)
    return int(digits), m.group(2)


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most `count` requests per window of `unit` (s, m, h or d)."""

    count: int
    unit: str
    seconds: int = field(init=False, compare=False, repr=False)  # of a window

    def __post_init__(self) -> None:
        object.__setattr__(self, "seconds", UNIT_SECONDS[self.unit])

    @classmethod
    def parse(cls, text: str) -> RateLimit:
        """`600/m` → RateLimit(600, "m"); ZeroLimit for `0/m`, ValueError (message: RULE)
        otherwise."""
        return cls(*parse_notation(text, UNIT_SECONDS, MAX_COUNT, RULE, ZERO_RULE))

    def window(self, now: float) -> tuple[int, float, float]:
        """The aligned window `now` falls in: its index, its first second and the first
        after it."""
        index = int(now // self.seconds)
        return index, float(index * self.seconds), float((index + 1) * self.seconds)

    def __str__(self) -> str:
        return f"{self.count}/{self.unit}"


def client_key(address: str) -> str:
    """The unit a client address is counted in (failed authentications, rate limits on
    anonymous calls): the IPv4 address, or the IPv6 /64 (one host holds a whole /64)."""
    if ":" not in address:
        return address
    try:
        network = ipaddress.IPv6Network((address, 64), strict=False)
    except ValueError:
        return address
    mapped = ipaddress.IPv6Address(address).ipv4_mapped if "." in address else None
    return str(mapped) if mapped is not None else str(network)
