"""The route policy as servers hold it: each route's rules (`RoutePolicy`, `JwtSettings`)
and the snapshot the sync job publishes (`PolicySnapshot`, with route secrets only as
SHA-256 hashes).

The policy file's schema and its validation are core/policy.py, which re-exports these
names. The credential kinds (core/identity/) read these types, and policy.py reads the kinds'
table (`KINDS`) to validate `credentials:`; both import this module, which imports neither.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import cached_property
from typing import Any

from extauthz.core.budget import Budget
from extauthz.core.credentials import ROUTE_NAME
from extauthz.core.durations import MAX_SECONDS
from extauthz.core.llm import check_model_patterns
from extauthz.core.prices import NO_PRICES, PriceTable
from extauthz.core.rate_limit import RateLimit
from extauthz.core.route_match import MatchRule, RouteMatcher
from extauthz.core.token_limit import TokenLimit
from extauthz.core.token_record import TokenRecord
from extauthz.errors import MalformedRecord, shown

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_CREDENTIALS = ("bearer",)
JWT_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA")


class Access(StrEnum):
    PUBLIC = "public"
    PROTECTED = "protected"
    PRIVATE = "private"


@dataclass(frozen=True, slots=True)
class JwtSettings:
    """How a route verifies OIDC/JWT bearer tokens."""

    issuer: str
    audiences: tuple[str, ...] = ()
    jwks_uri: str | None = None
    jwks_file: str | None = None
    scopes_claim: str = "scope"
    subject_claim: str = "sub"
    models_claim: str | None = None  # a claim listing the models it may use (LLM routes)
    team_claim: str | None = None  # a claim naming the caller's team (docs/teams.md)
    algorithms: tuple[str, ...] = JWT_ALGORITHMS
    leeway_seconds: int = 30
    # (claim path, header): claims forwarded to the model; headers are x-extauthz-*
    forward_claims: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    """One route's access rules."""

    name: str
    access: Access
    credentials: tuple[str, ...] = DEFAULT_CREDENTIALS
    credentials_listed: bool = False  # True when the file names `credentials` explicitly
    basic_username: str | None = None
    scopes: frozenset[str] = frozenset()  # a token needs one of these; empty = any
    jwt: JwtSettings | None = None
    max_token_ttl: int | None = None  # seconds: the longest life a token for it may have
    rate_limit: RateLimit | None = None  # per caller on this route
    match: tuple[MatchRule, ...] = ()  # host/path rules for `--route-identity match`
    api: str | None = None  # "openai": an LLM endpoint, the model named in the JSON body
    models: tuple[str, ...] = ()  # what it serves: names and `prefix*` (empty: any model)
    token_limit: TokenLimit | None = None  # LLM tokens per caller on this route
    # "require": streaming requests that do not ask for a usage chunk get one added (and
    # taken out of the reply); "count": such streams are counted a token per content chunk
    stream_usage: str = "count"
    # the output cap added to requests that name none (what a token limit reserves for them)
    default_max_tokens: int | None = None
    budget: Budget | None = None  # USD of LLM use per caller on this route, priced

    @property
    def reads_source_address(self) -> bool:
        """Whether its decision depends on the client's address: private routes (internal
        networks) and per-address rate limits (public routes; private ones answer internal
        callers without credentials). Elsewhere the address plays no part
        (docs/design.md#the-decision)."""
        return self.access is Access.PRIVATE or (
            self.access is Access.PUBLIC
            and (
                self.rate_limit is not None
                or self.token_limit is not None
                or self.budget is not None
            )
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"access": self.access.value, "credentials": list(self.credentials)}
        if self.credentials_listed:
            out["credentials_listed"] = True
        if self.basic_username is not None:
            out["basic_username"] = self.basic_username
        if self.scopes:
            out["scopes"] = sorted(self.scopes)
        if self.max_token_ttl is not None:
            out["max_token_ttl"] = self.max_token_ttl
        if self.rate_limit is not None:
            out["rate_limit"] = str(self.rate_limit)
        if self.match:
            out["match"] = [rule.to_json() for rule in self.match]
        if self.api is not None:
            out["api"] = self.api
        if self.models:
            out["models"] = list(self.models)
        if self.token_limit is not None:
            out["token_limit"] = str(self.token_limit)
        if self.stream_usage != "count":
            out["stream_usage"] = self.stream_usage
        if self.default_max_tokens is not None:
            out["default_max_tokens"] = self.default_max_tokens
        if self.budget is not None:
            out["budget"] = str(self.budget)
        if self.jwt is not None:
            jwt = self.jwt
            out["jwt"] = {
                "issuer": jwt.issuer,
                "audiences": list(jwt.audiences),
                "jwks_uri": jwt.jwks_uri,
                "jwks_file": jwt.jwks_file,
                "scopes_claim": jwt.scopes_claim,
                "subject_claim": jwt.subject_claim,
                "models_claim": jwt.models_claim,
                "team_claim": jwt.team_claim,
                "algorithms": list(jwt.algorithms),
                "leeway_seconds": jwt.leeway_seconds,
                "forward_claims": [list(pair) for pair in jwt.forward_claims],
            }
        return out

    @classmethod
    def from_json(cls, name: str, data: Mapping[str, Any]) -> RoutePolicy:
        jwt = data.get("jwt")
        return cls(
            name=name,
            access=Access(data["access"]),
            credentials=tuple(data.get("credentials", DEFAULT_CREDENTIALS)),
            credentials_listed=bool(data.get("credentials_listed", False)),
            basic_username=data.get("basic_username"),
            scopes=frozenset(data.get("scopes", ())),
            max_token_ttl=_seconds_or_none(data.get("max_token_ttl")),
            rate_limit=RateLimit.parse(data["rate_limit"]) if data.get("rate_limit") else None,
            match=tuple(MatchRule.from_json(m) for m in data.get("match", ())),
            api=data.get("api"),
            models=check_model_patterns(data.get("models", ())),
            token_limit=TokenLimit.parse(data["token_limit"]) if data.get("token_limit") else None,
            stream_usage=data.get("stream_usage", "count"),
            default_max_tokens=data.get("default_max_tokens"),
            budget=Budget.parse(data["budget"]) if data.get("budget") else None,
            jwt=None
            if jwt is None
            else JwtSettings(
                issuer=jwt["issuer"],
                audiences=tuple(jwt.get("audiences", ())),
                jwks_uri=jwt.get("jwks_uri"),
                jwks_file=jwt.get("jwks_file"),
                scopes_claim=jwt.get("scopes_claim", "scope"),
                subject_claim=jwt.get("subject_claim", "sub"),
                models_claim=jwt.get("models_claim"),
                team_claim=jwt.get("team_claim"),
                algorithms=tuple(jwt.get("algorithms", JWT_ALGORITHMS)),
                leeway_seconds=int(jwt.get("leeway_seconds", 30)),
                forward_claims=tuple((c, h) for c, h in jwt.get("forward_claims", ())),
            ),
        )


def _seconds_or_none(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_SECONDS:
        raise ValueError(f"max_token_ttl {shown(str(value), 32)} is not a number of seconds")
    return value


@dataclass(frozen=True)
class PolicySnapshot:
    """The policy servers decide with: routes, internal networks and hashed route secrets."""

    version: int
    routes: Mapping[str, RoutePolicy]
    internal_networks: tuple[IPNetwork, ...] = ()
    secrets: Mapping[str, TokenRecord] = field(default_factory=dict)  # sha256 hex → record
    prices: PriceTable = NO_PRICES  # model prices (budgets), and what unpriced models cost
    on_leak: str = "revoke"  # a secret reported leaked: "revoke" it, or only "notify"

    def is_internal_address(self, address: str) -> bool:
        if not self.internal_networks or not address:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.internal_networks)

    @cached_property
    def address_routes(self) -> frozenset[str]:
        """The routes whose decisions depend on the client's address (the runtime reads it
        from Envoy's request only for these)."""
        return frozenset(name for name, r in self.routes.items() if r.reads_source_address)

    @cached_property
    def llm_routes(self) -> frozenset[str]:
        """The routes whose decision reads the request body's model (`api: openai`)."""
        return frozenset(name for name, r in self.routes.items() if r.api is not None)

    @cached_property
    def peer_routes(self) -> frozenset[str]:
        """The routes whose decision reads more of Envoy's request than the common facts:
        the client's address, or the body (one set: one lookup on the warm path)."""
        return self.address_routes | self.llm_routes

    @cached_property
    def matcher(self) -> RouteMatcher:
        """The routes' `match:` rules, compiled (for `--route-identity match`)."""
        return RouteMatcher((rule, r.name) for r in self.routes.values() for rule in r.match)

    def digest(self) -> str:
        """SHA-256 of the content, independent of the version number."""
        return hashlib.sha256(replace(self, version=0).to_json().encode()).hexdigest()

    def to_json(self) -> str:
        data: dict[str, Any] = {
            "version": self.version,
            "internal_networks": [str(n) for n in self.internal_networks],
            "routes": {name: r.to_json() for name, r in sorted(self.routes.items())},
            "secrets": {h: r.to_fields() for h, r in sorted(self.secrets.items())},
        }
        # (only when not the default: snapshots published before them keep their digest)
        if self.prices != NO_PRICES:
            data.update(self.prices.to_json())
        if self.on_leak != "revoke":
            data["on_leak"] = self.on_leak
        return json.dumps(
            data,
            sort_keys=True,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> PolicySnapshot:
        data = json.loads(text)
        bad = [n for n in data["routes"] if not ROUTE_NAME.fullmatch(n)]
        if bad:
            raise MalformedRecord(f"route name {shown(bad[0], 64)} is not valid")
        return cls(
            version=int(data["version"]),
            routes={n: RoutePolicy.from_json(n, r) for n, r in data["routes"].items()},
            internal_networks=tuple(ipaddress.ip_network(n) for n in data["internal_networks"]),
            secrets={h: TokenRecord.from_fields(f) for h, f in data.get("secrets", {}).items()},
            prices=PriceTable.from_json(data),
            on_leak=_on_leak(data.get("on_leak", "revoke")),
        )


def _on_leak(value: object) -> str:
    if value not in ("revoke", "notify"):
        raise MalformedRecord(f"on_leak {shown(str(value), 32)} is not revoke or notify")
    return str(value)


EMPTY_SNAPSHOT = PolicySnapshot(version=0, routes={})
