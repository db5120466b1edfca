"""What every credential kind shares: the context it may consult and what it answers.

A kind looks at the parsed Authorization header and either says "not mine" (None) or
answers with an Identity (who is calling, what it may reach), a Rejected (→ 401), an
Unavailable (→ 503) or a Throttled (→ 429). Authorization and the response are decided
after it, the same way for every kind (decision.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from extauthz.core.budget import Budget
from extauthz.core.cidrs import AllowedCidrs
from extauthz.core.credentials import Credential
from extauthz.core.jwt_verify import JwtVerify
from extauthz.core.rate_limit import RateLimit
from extauthz.core.route_policy import PolicySnapshot, RoutePolicy
from extauthz.core.team_record import TeamRecord
from extauthz.core.token_limit import TokenLimit
from extauthz.core.token_record import TokenRecord

FOREVER = float("inf")
TokenLookup = Callable[[str], TokenRecord | None]
TeamLookup = Callable[[str], TeamRecord | None]  # by team id (may raise StoreError)


def no_teams(team_id: str) -> TeamRecord | None:
    """The team lookup where there is no store: no team exists."""
    return None


Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Context:
    """What a kind may consult: the route, the policy, the token store, the clock."""

    route: RoutePolicy
    snapshot: PolicySnapshot
    lookup: TokenLookup  # token record by SHA-256 hex (may raise StoreError, TooManyFailures)
    now: float
    verify_jwt: JwtVerify | None
    teams: TeamLookup = no_teams


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is calling. `grants`: the routes it may call (None: its issuer decided, as for a
    JWT whose audience was checked). `valid_until`: the same answer holds until then (None:
    it also depends on something else, such as the IdP's keys)."""

    subject: str
    scopes: frozenset[str]
    grants: frozenset[str] | None
    reason: str
    headers: Headers = ()
    valid_until: float | None = FOREVER
    name: str = ""  # a token's label (dynamic metadata `token_name`), never a secret
    rate_limit: RateLimit | None = None  # the token's own limit
    token_id: str | None = None  # a token or route secret (its usage is metered)
    models: frozenset[str] | None = None  # LLM models it may use (patterns); None: any
    token_limit: TokenLimit | None = None  # the token's own LLM token limit
    team_id: str | None = None  # the team it names (403 unknown_team when there is none)
    team: TeamRecord | None = None  # that team's record: its models and limits apply too
    budget: Budget | None = None  # the token's own budget (USD per window)
    allowed_cidrs: AllowedCidrs | None = None  # the token's client networks; None: any


@dataclass(frozen=True, slots=True)
class Rejected:
    """401. `description` is fixed text, never credential content; `presented`: a
    credential was given but refused (adds error="invalid_token" to the challenge)."""

    reason: str
    description: str
    presented: bool = True
    subject: str | None = None
    valid_until: float | None = FOREVER


@dataclass(frozen=True, slots=True)
class Unavailable:
    """503: what the answer needs (Redis, the IdP's keys) cannot be reached."""

    reason: str


@dataclass(frozen=True, slots=True)
class Throttled:
    """429: this client failed too often; its credentials are not looked up for a while."""

    retry_after: float


IdentityResult = Identity | Rejected | Unavailable | Throttled


class CredentialKind(Protocol):
    """One way of proving who you are. Register it in identity/__init__.py."""

    @property
    def name(self) -> str:
        """As listed in a route's `credentials:` in the policy file."""
        ...

    @property
    def scheme(self) -> str:
        """The Authorization scheme it answers to (for WWW-Authenticate)."""
        ...

    @property
    def headers(self) -> tuple[str, ...]:
        """Request headers Envoy must send to extauthz for it."""
        ...

    def identify(self, credential: Credential, ctx: Context) -> IdentityResult | None:
        """The answer for this credential, or None when it is not this kind's to judge."""
        ...
