"""The decision, pure: request facts + policy snapshot + token lookup + clock → Decision.

This is the table in the README, "How a request is decided" (docs/architecture.md shows
where it sits): the route and its access type, then for protected routes three stages,
identity (core/identity/: one module per credential kind), authorization (grant, scopes)
and the response (headers, removals, denial bodies). The only input that may do I/O is
`lookup` (a token record by SHA-256 hex); when Redis cannot answer the decision is ERROR
(Envoy then answers with its `status_on_error`), never an allow.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple, assert_never

from extauthz.core.credentials import (
    BasicCredential,
    BearerCredential,
    Credential,
    MalformedCredential,
    NoCredential,
    UnsupportedScheme,
    parse_authorization,
)
from extauthz.core.headers import (
    IDENTITY_HEADERS,
    IDENTITY_PREFIX,
    MODEL_HEADER,
    ROUTE_HEADER,
    SCOPES_HEADER,
    SUBJECT_HEADER,
)
from extauthz.core.identity import KINDS
from extauthz.core.identity.base import (
    FOREVER,
    Context,
    Headers,
    Identity,
    IdentityResult,
    Rejected,
    TeamLookup,
    Throttled,
    TokenLookup,
    Unavailable,
    no_teams,
)
from extauthz.core.jwt_verify import JwtVerify
from extauthz.core.limits import MONEY, REQUESTS, TOKENS, Limited, limits_for
from extauthz.core.llm import (
    DEFAULT_MAX_TOKENS,
    INVALID,
    MEDIA_TYPE,
    UNKNOWN_ENDPOINT,
    LlmRequest,
    model_allowed,
)
from extauthz.core.llm_usage import ASK_FOR_USAGE
from extauthz.core.policy import Access, PolicySnapshot, RoutePolicy
from extauthz.core.prices import FREE, NO_PRICES, Price, PriceTable, usd_text
from extauthz.core.rate_limit import client_key

ANONYMOUS = "anonymous"
INTERNAL = "internal"

__all__ = [  # re-exported: the decision's vocabulary
    "FOREVER",
    "IDENTITY_HEADERS",
    "IDENTITY_PREFIX",
    "ROUTE_HEADER",
    "SCOPES_HEADER",
    "SUBJECT_HEADER",
    "Headers",
    "TeamLookup",
    "TokenLookup",
]


class Outcome(StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    ERROR = "error"


NO_HEADERS: Mapping[str, str] = {}  # a request without headers (none read, none sent)
_REQUEST_ID = re.compile(r"[!-~]{1,128}", re.ASCII)


def shown_request_id(value: str) -> str:
    """Envoy's x-request-id as it may be echoed in a denial body or written in a log line:
    `value` if 1-128 visible ASCII characters, else ''."""
    return value if value and _REQUEST_ID.fullmatch(value) else ""


class RequestFacts(NamedTuple):
    """What the decision needs to know about one request (already extracted from Envoy's).

    A named tuple: made, hashed and compared (it keys the decision memo) in C."""

    route: str | None
    network: str | None = None
    source_address: str = ""
    authorization: str | None = None
    # names of client-sent headers starting with "x-extauthz-": removed unless we set them
    identity_headers_sent: tuple[str, ...] = ()
    # `--route-identity match`: (host, path) to resolve against the policy's match rules;
    # the route is named from them before deciding (and this is then cleared)
    target: tuple[str, str] | None = None
    # `api: openai` routes: the model the body names (read from Envoy's request only there)
    llm: LlmRequest | None = None


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
    # ALLOW: Envoy's dynamic metadata (subject, route, scopes, token_name) for access logs
    metadata: tuple[tuple[str, str], ...] = ()
    # ALLOW: the limits' counters it must take from (1 request; `reserve` LLM tokens), each
    # time it is given (also when remembered): the runtime turns it into a 429 when one
    # has no room (core/limits.py, runtime/limiter.py)
    limits: tuple[Limited, ...] = field(default=(), compare=False)
    # the token (or route secret) it was decided for: its usage is metered
    token_id: str | None = field(default=None, compare=False)
    # `api: openai` routes: the model allowed (usage and metrics per model)
    model: str | None = field(default=None, compare=False)
    # ALLOW with a model under a token limit or budget: the tokens it reserves (its bound)
    reserve: int = field(default=0, compare=False)
    # ALLOW with a model under a budget: the micro-dollars it reserves, at `price`
    cost: int = field(default=0, compare=False)
    price: Price | None = field(default=None, compare=False)
    # ALLOW: headers added to the response sent to the client (the tokens left)
    response_headers: Headers = ()


def decide(
    facts: RequestFacts,
    snapshot: PolicySnapshot | None,
    lookup: TokenLookup,
    now: float,
    verify_jwt: JwtVerify | None = None,
    teams: TeamLookup = no_teams,
) -> Decision:
    """Decide one request. `snapshot` is None when no policy could be loaded yet.

    `lookup` finds an opaque token's record by hash; `verify_jwt` checks a JWT against a
    route's issuer settings (None: JWTs are refused); `teams` finds a team's record by id.
    """
    if snapshot is None:
        return unavailable("no_policy")
    route = snapshot.routes.get(facts.route) if facts.route else None
    if route is None:
        return _not_found("unknown_route")
    if route.access is Access.PUBLIC:
        model = _model(facts, route, None, ANONYMOUS)
        if isinstance(model, Decision):
            return model
        return _allow(
            facts, route, ANONYMOUS, frozenset(), "public",
            limits=_per_address(facts, route, model), model=model, prices=snapshot.prices,
        )  # fmt: skip
    if route.access is Access.PRIVATE:
        internal = facts.network == INTERNAL or snapshot.is_internal_address(facts.source_address)
        if not internal:
            return _not_found("private_external")
        if not route.credentials_listed:
            model = _model(facts, route, None, INTERNAL)
            if isinstance(model, Decision):
                return model
            return _allow(
                facts, route, INTERNAL, frozenset(), "internal",
                limits=_per_address(facts, route, model), model=model, prices=snapshot.prices,
            )  # fmt: skip
    return _decide_protected(facts, route, snapshot, lookup, now, verify_jwt, teams)


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
    teams: TeamLookup,
) -> Decision:
    ctx = Context(route, snapshot, lookup, now, verify_jwt, teams)
    result = identify(parse_authorization(facts.authorization), ctx)  # 1. identity
    if isinstance(result, Identity):  # the common case first
        team = result.team
        if result.allowed_cidrs is not None or (team is not None and team.allowed_cidrs):
            denied = address_check(result, facts.source_address)  # before any limit
            if denied is not None:
                return denied
        denied = authorize(result, route)  # 2. authorization
        if denied is not None:
            return denied
        team_models = team.models if team is not None else None
        model = _model(facts, route, result.models, result.subject, result.valid_until, team_models)
        if isinstance(model, Decision):
            return model
        # a route's limit counts per caller: tokens by id, JWTs by issuer and subject (their
        # subjects are `jwt:<issuer>:<sub>`), never one in the other's counter
        caller = f"tok:{result.token_id}" if result.token_id else f"sub:{result.subject}"
        team_id = team.id if team is not None else None
        limits = limits_for(  # (counted by the runtime, see Decision.limits)
            REQUESTS, route.name, route.rate_limit, result.token_id, result.rate_limit, caller,
            team_id, team.rate_limit if team is not None else None,
        )  # fmt: skip
        if model is not None:  # (a request that names no model uses no LLM tokens)
            limits += limits_for(
                TOKENS, route.name, route.token_limit, result.token_id, result.token_limit,
                caller, team_id, team.token_limit if team is not None else None,
            ) + limits_for(
                MONEY, route.name, route.budget, result.token_id, result.budget,
                caller, team_id, team.budget if team is not None else None,
            )  # fmt: skip
        return _allow(  # 3. response
            facts, route, result.subject, result.scopes, result.reason, result.headers,
            until=result.valid_until, name=result.name, limits=limits, token_id=result.token_id,
            model=model, prices=snapshot.prices,
        )  # fmt: skip
    match result:
        case Rejected(reason=reason, description=text, presented=shown, subject=who) as no:
            return _unauthorized(
                route, reason, text, presented=shown, subject=who, until=no.valid_until
            )
        case Unavailable(reason=reason):
            return unavailable(reason)
        case Throttled(retry_after=wait):
            return too_many_failures(wait)
        case unreachable:
            assert_never(unreachable)


def identify(credential: Credential, ctx: Context) -> IdentityResult:
    """Stage 1: the first accepted kind (in KINDS order) that claims the credential."""
    match credential:
        case NoCredential():
            return Rejected("no_credential", "credential required", presented=False)
        case MalformedCredential(reason=why):
            return Rejected("malformed_credential", why)
    for name, kind in KINDS.items():
        if name in ctx.route.credentials:
            answer = kind.identify(credential, ctx)
            if answer is not None:
                return answer
    return Rejected("unsupported_scheme", _NOT_ACCEPTED[type(credential)], presented=False)


_NOT_ACCEPTED = {
    BearerCredential: "bearer tokens not accepted",
    BasicCredential: "basic credentials not accepted",
    UnsupportedScheme: "authorization scheme not accepted",
}


def authorize(identity: Identity, route: RoutePolicy) -> Decision | None:
    """Stage 2: may this identity call this route? None when it may; else the 403.

    Its rate limits (the token's, the route's per caller) ride on the allow as
    `Decision.limits`: counting is state shared across processes, done by the runtime for
    every request, also for a remembered decision (see `limit_reached`).
    """
    if identity.team_id is not None and identity.team is None:  # (deleted, or a typo by hand)
        return _forbidden("unknown_team", identity.subject, until=identity.valid_until)
    grants = identity.grants
    if grants is not None and route.name not in grants and "*" not in grants:
        return _forbidden("route_not_granted", identity.subject, until=identity.valid_until)
    if route.scopes and route.scopes.isdisjoint(identity.scopes):
        return _forbidden("missing_scope", identity.subject, until=identity.valid_until)
    return None


ADDRESS_NOT_ALLOWED = "address_not_allowed"
_ADDRESS_BODY = json.dumps(
    {"error": ADDRESS_NOT_ALLOWED, "message": "this credential may not be used from this address"}
)


def address_check(identity: Identity, address: str) -> Decision | None:
    """A token's `allowed_cidrs` and its team's (both, where both are set): None when
    `address` (the client's, as the per-address limits count it) is in them, else 403
    `address_not_allowed` (no limit taken). An address not read ("") is in none: the
    runtime reads it and decides again (runtime/authorizer.py)."""
    team = identity.team
    for cidrs in (identity.allowed_cidrs, team.allowed_cidrs if team is not None else None):
        if cidrs is not None and not cidrs.allows(address):
            return Decision(
                Outcome.DENY, 403, ADDRESS_NOT_ALLOWED, (_JSON,), body=_ADDRESS_BODY,
                subject=identity.subject, reusable_until=identity.valid_until,
            )  # fmt: skip
    return None


_MODEL_REQUIRED = {  # why a body names no model, as the 400 says it
    "no_body": 'send a JSON object body with a string "model"',
    "not_json": "the body is not a JSON object (UTF-8, no byte order mark)",
    "no_model": 'the body has no top-level "model"',
    "bad_model": '"model" must be a string of 1-256 visible ASCII characters',
    "duplicate_model": 'the body names "model" more than once',
}
# what else the request reader refuses, and with which status (its message says why)
_REFUSED_REQUEST = {INVALID: 400, MEDIA_TYPE: 415, UNKNOWN_ENDPOINT: 404}
# dynamic metadata: what Envoy's Lua filter (or the editing ext_proc filter) sets in the
# request body (LlmRequest.splices), and whether it takes the asked-for usage chunk out
EDIT_KEY = "edit"
STRIP_KEY = "strip_usage"


def _model(
    facts: RequestFacts,
    route: RoutePolicy,
    allowed: frozenset[str] | None,
    subject: str,
    until: float | None = FOREVER,
    team_allows: frozenset[str] | None = None,
) -> str | Decision | None:
    """On an `api: openai` route, the model the body asks for if the route serves it and
    the credential may use it (`allowed`: its patterns, None: any; `team_allows`: its
    team's, which it must match too); else the denial. None where there is no model: not an
    LLM route, or a request that takes none (GET)."""
    if route.api is None:
        return None
    llm = facts.llm
    if llm is None or llm.error is not None:
        error = llm.error if llm is not None and llm.error else "no_body"
        status = _REFUSED_REQUEST.get(error)
        if status is not None:
            return _model_denial(status, error, llm.message if llm else "", subject, until)
        return _model_denial(400, "model_required", _MODEL_REQUIRED.get(error, ""), subject, until)
    model = llm.model
    if model is None:
        return None  # (GET /v1/models: nothing to choose)
    if route.models and not model_allowed(route.models, model):
        return _model_denial(
            404, "model_not_found", f"this route does not serve {model!r}", subject, until
        )
    if allowed is not None and not model_allowed(allowed, model):
        return _model_denial(
            403, "model_not_allowed", f"this credential may not use {model!r}", subject, until
        )
    if team_allows is not None and not model_allowed(team_allows, model):
        return _model_denial(
            403, "model_not_allowed", f"this credential's team may not use {model!r}", subject,
            until,
        )  # fmt: skip
    return model


def _model_denial(
    status: int, reason: str, message: str, subject: str, until: float | None
) -> Decision:
    return Decision(
        Outcome.DENY,
        status,
        reason,
        (_JSON,),
        body=_body(reason, message),
        subject=subject,
        reusable_until=until,
    )


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
    name: str = "",
    limits: tuple[Limited, ...] = (),
    token_id: str | None = None,
    model: str | None = None,
    prices: PriceTable = NO_PRICES,
) -> Decision:
    scope_list = ",".join(sorted(scopes))
    if model is not None:
        extra = ((MODEL_HEADER, model), *extra)
    headers = (
        (SUBJECT_HEADER, subject),
        (ROUTE_HEADER, route.name),
        (SCOPES_HEADER, scope_list),
        *extra,
    )
    ours = IDENTITY_HEADERS + tuple(header for header, _ in extra)
    spoofed = [h for h in facts.identity_headers_sent if h not in ours]
    remove = ("authorization", *spoofed)
    metadata: tuple[tuple[str, str], ...] = (
        ("subject", subject),
        ("route", route.name),
        ("scopes", scope_list),
    )
    if name:
        metadata += (("token_name", name),)
    reserve = cost = 0
    price: Price | None = None
    llm = facts.llm
    if model is not None and llm is not None:
        metadata += (("model", model),)
        if token_id is not None:  # (whom the response's tokens are charged to)
            metadata += (("token_id", token_id),)
        metadata += (("api", llm.api),)  # (where the response's usage is)
        # where a limit applies every request gets an output cap: a finite bound
        default = route.default_max_tokens
        settled = [limited for limited in limits if limited.kind.settled]
        if default is None and settled:
            default = DEFAULT_MAX_TOKENS
        edits: tuple[tuple[str, object], ...] = llm.cap_edits(default)
        asks = llm.stream and llm.usage_asked and not llm.stream_options
        if route.stream_usage == "require" and asks:
            edits = (ASK_FOR_USAGE, *edits)  # the stream is asked for its usage
            metadata += ((STRIP_KEY, "1"),)  # (and the client does not see that chunk)
        if edits:
            metadata += ((EDIT_KEY, llm.splices(edits)),)
        if settled:
            if llm.hosted_tool:  # (its fees and its turns' tokens are in no bound)
                return _model_denial(
                    400, INVALID, f"tool type {llm.hosted_tool} runs on the server, beyond any "
                    "bound: under a token limit or budget only function and custom tools",
                    subject, until,
                )  # fmt: skip
            reserve = llm.bound(default) or 0
            if any(limited.kind is MONEY for limited in settled):
                if llm.premium:
                    return _model_denial(
                        400, INVALID, f"{llm.premium}: a budget counts the model's standard "
                        "prices for text; leave it out", subject, until,
                    )  # fmt: skip
                price = prices.of(model)
                if price is None:
                    if prices.unpriced != "free":
                        return _model_denial(
                            403, "model_unpriced", f"{model!r} has no price, and a budget "
                            "applies here: the policy's prices: must name it", subject, until,
                        )  # fmt: skip
                    price = FREE
                cost = price.reserve(llm.size, reserve - llm.size)
            for limited in settled:
                need = reserve if limited.kind is TOKENS else cost
                if need > limited.limit.count:  # (waiting would never help)
                    return request_too_large(need, limited, subject, token_id, until)
    return Decision(
        Outcome.ALLOW,
        200,
        reason,
        headers,
        remove,
        subject=subject,
        reusable_until=until,
        metadata=metadata,
        limits=limits,
        token_id=token_id,
        model=model,
        reserve=reserve,
        cost=cost,
        price=price,
    )


def _per_address(facts: RequestFacts, route: RoutePolicy, model: str | None) -> tuple[Limited, ...]:
    """A route's limits for a caller nobody names: counted per client address."""
    tokens = route.token_limit if model is not None else None
    budget = route.budget if model is not None else None
    if route.rate_limit is None and tokens is None and budget is None:
        return ()
    caller = f"addr:{client_key(facts.source_address)}"
    limits = limits_for(REQUESTS, route.name, route.rate_limit, None, None, caller)
    limits += limits_for(TOKENS, route.name, tokens, None, None, caller)
    return limits + limits_for(MONEY, route.name, budget, None, None, caller)


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


def limit_reached(limited: Limited, retry_after: float, window: float, allow: Decision) -> Decision:
    """429 instead of `allow`: `limited` has no room left in this window (of `window`
    seconds) for it; `retry_after`: seconds until the next window."""
    kind = limited.kind
    message = f"{kind.noun} {limited.limit} of {limited.what} reached; retry later"
    headers: Headers = (_JSON, ("retry-after", str(max(1, math.ceil(retry_after)))))
    if kind is REQUESTS:  # (the IETF draft's header counts requests)
        headers += (("ratelimit-policy", f"{limited.limit.count};w={round(window)}"),)
    return Decision(
        Outcome.DENY,
        429,
        kind.reason,
        headers,
        body=_body(kind.reason, message),
        subject=allow.subject,
        reusable_until=None,
        token_id=allow.token_id,
    )


def request_too_large(
    bound: int, limited: Limited, subject: str, token_id: str | None, until: float | None
) -> Decision:
    """413: a request whose bound alone is more than a token limit or budget allows in a
    window (it could never be admitted: no Retry-After); `bound`: tokens, or micro-dollars
    for a budget."""
    if limited.kind is MONEY:
        message = (
            f"this request may cost up to ${usd_text(bound)} (body bytes + output cap x "
            f"choices, at the model's prices), more than the budget {limited.limit} of "
            f"{limited.what}: set a smaller output cap"
        )
    else:
        message = (
            f"this request may use up to {bound} tokens (body bytes + output cap x choices), "
            f"more than the token limit {limited.limit} of {limited.what}: set a smaller output cap"
        )
    return Decision(
        Outcome.DENY,
        413,
        "request_too_large",
        (_JSON,),
        body=_body("request_too_large", message),
        subject=subject,
        reusable_until=until,
        token_id=token_id,
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


def unavailable(reason: str) -> Decision:
    """503: something the decision needs cannot answer now (fail closed)."""
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
    """The WWW-Authenticate value: one challenge per accepted scheme (RFC 7235, 6750), in
    KINDS order, each scheme once.

    `rejected` is a short description of why a presented token failed; it adds
    `error="invalid_token"` to the Bearer challenge. It never contains the token.
    """
    schemes = dict.fromkeys(
        kind.scheme for name, kind in KINDS.items() if name in route.credentials
    )
    parts = []
    for scheme in sorted(schemes, key=_SCHEME_ORDER.index):
        if scheme == "Bearer":
            bearer = f'Bearer realm="{route.name}"'
            if rejected is not None:
                bearer += f', error="invalid_token", error_description="{rejected}"'
            parts.append(bearer)
        else:
            parts.append(f'{scheme} realm="{route.name}", charset="UTF-8"')
    return ", ".join(parts)


_SCHEME_ORDER = ["Bearer", "Basic"]
