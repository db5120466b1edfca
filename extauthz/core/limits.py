"""Limits, pure: one table of what is counted (kind) and for whom (scope), one spec per counter
an allow takes from, one place that names the counters (docs/architecture.md#where-things-go: a
new limit kind or scope; docs/design.md#limits).

A kind is a row: requests (a rate limit, `600/m`: each allow needs 1, never settled), LLM
tokens (a token limit, `100000/d`: each allow reserves its bound, settled from the
response's usage) and money (a budget, `$50/mo`: each allow reserves its bound priced at the
model's prices, in micro-dollars, settled from the response's usage priced alike). A scope
is who a counter belongs to: the token itself (`token:<id>`), or
a team, pooled over its tokens (`team:<id>`), or the caller on a route
(`route:<route>:<caller>`, the caller a token id, a JWT subject, or the client address where
nobody is named). Every spec that applies to an allow must have
room for it, or none is taken (runtime/limiter.py, which leases from Redis).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


class Window(Protocol):
    """A limit's notation: at most `count` per window of `unit` (core/rate_limit.py,
    core/token_limit.py)."""

    @property
    def count(self) -> int: ...

    @property
    def unit(self) -> str: ...

    def window(self, now: float) -> tuple[int, float, float]:
        """The window `now` falls in: its index, its first second and the first after it."""
        ...


@dataclass(frozen=True, slots=True)
class Kind:
    """What a limit counts, and how it is leased and refused."""

    name: str
    prefix: str  # of its Redis counters: "{prefix}<this>:<scope>:<unit><window>"
    reason: str  # of its 429
    unavailable: str  # the reason of its 503 when Redis cannot count
    noun: str  # in the 429's message
    lease_seconds: float  # a lease lasts about this long at the rate a process sees
    max_lease_share: int  # beyond a request's need, a lease is at most 1/this of the limit
    settled: bool  # whether an allow's reservation is settled from what the response used


REQUESTS = Kind(
    "requests", "rl", "rate_limited", "rate_limit_unavailable", "rate limit", 0.25, 50, False
)
TOKENS = Kind(
    "tokens", "tl", "token_limit_reached", "token_limit_unavailable", "token limit", 1.0, 20, True
)
MONEY = Kind("budget", "bl", "budget_exhausted", "budget_unavailable", "budget", 1.0, 20, True)
KINDS = (REQUESTS, TOKENS, MONEY)
REFUSALS = frozenset(kind.reason for kind in KINDS)  # (metered as rate-limited requests)


@dataclass(frozen=True, slots=True)
class Limited:
    """One counter an allow takes from: `kind` counted for `scope` under `limit`."""

    kind: Kind
    scope: str  # "token:<id>", "team:<id>" or "route:<route>:<caller>"
    limit: Window
    what: str  # for the 429 message: "this token", "route llm"
    lease: str = field(default="", compare=False)  # kind, scope and limit: a changed limit
    # starts a new lease at once (the window's count in Redis stays)

    def __post_init__(self) -> None:
        if not self.lease:
            object.__setattr__(self, "lease", f"{self.kind.prefix}:{self.scope}|{self.limit}")


def limits_for(
    kind: Kind,
    route: str,
    route_limit: Window | None,
    token_id: str | None,
    token_limit: Window | None,
    caller: str,
    team_id: str | None = None,
    team_limit: Window | None = None,
) -> tuple[Limited, ...]:
    """The counters of `kind` an allow on `route` takes from: the token's own limit, its
    team's (pooled over the team's tokens), and the route's per `caller` (a subject, or the
    client address when nobody is named)."""
    out: tuple[Limited, ...] = ()
    if token_limit is not None and token_id is not None:
        out += (Limited(kind, f"token:{token_id}", token_limit, "this token"),)
    if team_limit is not None and team_id is not None:
        out += (Limited(kind, f"team:{team_id}", team_limit, f"team {team_id}"),)
    if route_limit is not None:
        out += (Limited(kind, f"route:{route}:{caller}", route_limit, f"route {route}"),)
    return out


def counter(kind: Kind, scope: str, limit: Window, now: float) -> tuple[str, float]:
    """The Redis counter (after the key prefix) of `scope` under `limit` in the window `now`
    falls in, and the window's end: "<kind>:<scope>:<unit><window>"."""
    index, _, ends = limit.window(now)
    return f"{kind.prefix}:{scope}:{limit.unit}{index}", ends
