"""The decision, pure: request facts + policy snapshot + token lookup + clock → Decision.

This is the table in the README, "How a request is decided" (docs/architecture.md shows
where it sits). The only input that may do I/O is `lookup` (a token record by SHA-256 hex);
when it raises StoreUnavailable the decision is ERROR (Envoy then answers with its
`status_on_error`), never an allow; TooManyFailures makes it a 429.
"""

from __future__ import annotations

import hmac
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from extauthz.core.credentials import (
    BasicCredential,
    BearerCredential,
    MalformedCredential,
    NoCredential,
    UnsupportedScheme,
    looks_like_jwt,
    parse_authorization,
    token_hash,
)
from extauthz.core.jwt_verify import JwtIdentity, JwtRejected, JwtUnavailable, JwtVerify
from extauthz.core.policy import Access, JwtSettings, PolicySnapshot, RoutePolicy
from extauthz.core.token_record import TokenRecord
from extauthz.errors import MalformedRecord, StoreError, TooManyFailures

SUBJECT_HEADER = "x-extauthz-subject"
ROUTE_HEADER = "x-extauthz-route"
SCOPES_HEADER = "x-extauthz-scopes"
IDENTITY_HEADERS = (SUBJECT_HEADER, ROUTE_HEADER, SCOPES_HEADER)
IDENTITY_PREFIX = "x-extauthz-"
ANONYMOUS = "anonymous"
INTERNAL = "internal"

FOREVER = float("inf")

TokenLookup = Callable[[str], TokenRecord | None]
Headers = tuple[tuple[str, str], ...]


class Outcome(StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What the decision needs to know about one request (already extracted from Envoy's)."""

    route: str | None
    network: str | None = None
    source_address: str = ""
    authorization: str | None = None
    # names of client-sent headers starting with "x-extauthz-": removed unless we set them
    identity_headers_sent: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer for Envoy.

    On ALLOW, `headers` go to the upstream (overwriting) and `remove_headers` are stripped.
    On DENY and ERROR, `status`, `headers` and `body` form the local reply to the client.
    `reason` and `subject` are for logs and metrics; neither ever holds a secret.

    `reusable_until`: the same facts, with the same policy snapshot and token records, get
    the same decision until this time (FOREVER: the clock plays no part); None when it also
    depends on something else (Redis being up, the IdP's keys): never reuse it.
    """

    outcome: Outcome
    status: int
    reason: str
    headers: Headers = ()
    remove_headers: tuple[str, ...] = ()
    body: str = ""
    subject: str | None = None
    reusable_until: float | None = field(default=FOREVER, compare=False)


def decide(
    facts: RequestFacts,
    snapshot: PolicySnapshot | None,
    lookup: TokenLookup,
    now: float,
    verify_jwt: JwtVerify | None = None,
) -> Decision:
    """Decide one request. `snapshot` is None when no policy could be loaded yet.

    `lookup` finds an opaque token's record by hash; `verify_jwt` checks a JWT against a
    route's issuer settings (None: JWTs are refused).
    """
    if snapshot is None:
        return _error("no_policy")
    route = snapshot.routes.get(facts.route) if facts.route else None
    if route is None:
        return _not_found("unknown_route")
    if route.access is Access.PUBLIC:
        return _allow(facts, route, ANONYMOUS, frozenset(), "public")
    if route.access is Access.PRIVATE:
        internal = facts.network == INTERNAL or snapshot.is_internal_address(facts.source_address)
        if not internal:
            return _not_found("private_external")
        if not route.credentials_listed:
            return _allow(facts, route, INTERNAL, frozenset(), "internal")
    return _decide_protected(facts, route, snapshot, lookup, now, verify_jwt)


def auth_disabled(facts: RequestFacts) -> Decision:
    """`--disable-auth`: allow everything, still stripping credentials and spoofed headers."""
    route = RoutePolicy(facts.route or "", Access.PUBLIC)
    return _allow(facts, route, "auth-disabled", frozenset(), "auth_disabled")


def _decide_protected(
    facts: RequestFacts,
    route: RoutePolicy,
    snapshot: PolicySnapshot,
    lookup: TokenLookup,
    now: float,
    verify_jwt: JwtVerify | None,
) -> Decision:
    credential = parse_authorization(facts.authorization)
    accepted = route.credentials
    match credential:
        case NoCredential():
            return _unauthorized(route, "no_credential", "credential required")
        case MalformedCredential(reason=why):
            return _unauthorized(route, "malformed_credential", why, presented=True)
        case UnsupportedScheme():
            return _unauthorized(route, "unsupported_scheme", "authorization scheme not accepted")
        case BearerCredential(token=token):
            if "jwt" in accepted and route.jwt is not None and looks_like_jwt(token):
                return _decide_jwt(facts, route, route.jwt, token, now, verify_jwt)
            if "bearer" not in accepted:
                return _unauthorized(route, "unsupported_scheme", "bearer tokens not accepted")
            secret = token
        case BasicCredential(username=username, password=password):
            if "basic" not in accepted or route.basic_username is None:
                return _unauthorized(route, "unsupported_scheme", "basic credentials not accepted")
            if not hmac.compare_digest(username.encode(), route.basic_username.encode()):
                return _unauthorized(route, "wrong_basic_username", "invalid credential")
            secret = password

    digest = token_hash(secret)
    try:
        record = snapshot.secrets.get(digest) or lookup(digest)
    except MalformedRecord:
        return _unauthorized(route, "malformed_record", "invalid token", presented=True)
    except StoreError:  # unavailable, refused, any other error reply: fail closed
        return _error("store_unavailable")
    except TooManyFailures as e:
        return too_many_failures(e.retry_after)
    if record is None:
        return _unauthorized(route, "unknown_token", "invalid token", presented=True)
    if record.expired(now):
        return _unauthorized(
            route, "expired_token", "token expired", presented=True, subject=record.id
        )
    if not record.grants_route(route.name):
        return _forbidden("route_not_granted", record.id)
    if route.scopes and route.scopes.isdisjoint(record.scopes):
        return _forbidden("missing_scope", record.id)
    return _allow(facts, route, record.id, record.scopes, "granted", until=record.valid_until())


def _decide_jwt(
    facts: RequestFacts,
    route: RoutePolicy,
    settings: JwtSettings,
    token: str,
    now: float,
    verify_jwt: JwtVerify | None,
) -> Decision:
    # JWT decisions also depend on the IdP's key set and the token's own times: not reusable
    if verify_jwt is None:
        return _unauthorized(route, "jwt_unsupported", "jwt not accepted", presented=True)
    match verify_jwt(token, settings, now):
        case JwtUnavailable():
            return _error("jwks_unavailable")
        case JwtRejected(reason=why):
            return _unauthorized(route, "invalid_jwt", why, presented=True, until=None)
        case JwtIdentity() as identity:
            if route.scopes and route.scopes.isdisjoint(identity.scopes):
                return _forbidden("missing_scope", identity.subject, until=None)
            return _allow(
                facts,
                route,
                identity.subject,
                identity.scopes,
                "granted_jwt",
                identity.headers,
                until=None,
            )
    raise AssertionError("unreachable")  # pragma: no cover


# --- building decisions ---------------------------------------------------------------------

_JSON = ("content-type", "application/json")


def _body(error: str, message: str) -> str:
    return json.dumps({"error": error, "message": message})


_NOT_FOUND_BODY = _body("not_found", "not found")
_FORBIDDEN_BODY = _body("forbidden", "the credential is not allowed here")
_TOO_MANY_BODY = _body(
    "rate_limited", "too many failed authentications from this address; retry later"
)
_ERROR_BODY = _body("unavailable", "authorization is temporarily unavailable")


def _allow(
    facts: RequestFacts,
    route: RoutePolicy,
    subject: str,
    scopes: frozenset[str],
    reason: str,
    extra: Headers = (),
    *,
    until: float | None = FOREVER,
) -> Decision:
    headers = (
        (SUBJECT_HEADER, subject),
        (ROUTE_HEADER, route.name),
        (SCOPES_HEADER, ",".join(sorted(scopes))),
        *extra,
    )
    ours = IDENTITY_HEADERS + tuple(name for name, _ in extra)
    spoofed = [h for h in facts.identity_headers_sent if h not in ours]
    remove = ("authorization", *spoofed)
    return Decision(
        Outcome.ALLOW, 200, reason, headers, remove, subject=subject, reusable_until=until
    )


def _not_found(reason: str) -> Decision:
    # Identical for unknown routes and private routes seen from outside: reveals nothing.
    return Decision(Outcome.DENY, 404, reason, (_JSON,), body=_NOT_FOUND_BODY)


def _forbidden(reason: str, subject: str, *, until: float | None = FOREVER) -> Decision:
    return Decision(
        Outcome.DENY,
        403,
        reason,
        (_JSON,),
        body=_FORBIDDEN_BODY,
        subject=subject,
        reusable_until=until,
    )


def too_many_failures(retry_after: float) -> Decision:
    """429: this client failed too often; its credentials are not looked up for a while."""
    return Decision(
        Outcome.DENY,
        429,
        "too_many_failures",
        (_JSON, ("retry-after", str(max(1, math.ceil(retry_after))))),
        body=_TOO_MANY_BODY,
        reusable_until=None,
    )


def _error(reason: str) -> Decision:
    return Decision(Outcome.ERROR, 503, reason, (_JSON,), body=_ERROR_BODY, reusable_until=None)


def _unauthorized(
    route: RoutePolicy,
    reason: str,
    description: str,
    *,
    presented: bool = False,
    subject: str | None = None,
    until: float | None = FOREVER,
) -> Decision:
    return Decision(
        Outcome.DENY,
        401,
        reason,
        (_JSON, ("www-authenticate", challenge(route, description if presented else None))),
        body=_body("unauthorized", description),
        subject=subject,
        reusable_until=until,
    )


def challenge(route: RoutePolicy, rejected: str | None = None) -> str:
    """The WWW-Authenticate value: one challenge per accepted scheme (RFC 7235, 6750).

    `rejected` is a short description of why a presented token failed; it adds
    `error="invalid_token"` to the Bearer challenge. It never contains the token.
    """
    parts = []
    if "bearer" in route.credentials or "jwt" in route.credentials:
        bearer = f'Bearer realm="{route.name}"'
        if rejected is not None:
            bearer += f', error="invalid_token", error_description="{rejected}"'
        parts.append(bearer)
    if "basic" in route.credentials:
        parts.append(f'Basic realm="{route.name}", charset="UTF-8"')
    return ", ".join(parts)
