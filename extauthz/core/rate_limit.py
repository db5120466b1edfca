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
from dataclasses import dataclass, field

_NOTATION = re.compile(r"([1-9][0-9]{0,11})/([smhd])", re.ASCII)
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
RULE = "use N/UNIT: a whole number of requests per s, m, h or d (e.g. 600/m)"


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
        """`600/m` → RateLimit(600, "m"); ValueError (message: RULE) otherwise."""
        m = _NOTATION.fullmatch(text.strip())
        if m is None:
            raise ValueError(RULE)
        return cls(int(m.group(1)), m.group(2))

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
