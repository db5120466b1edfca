"""Token lifecycle: create, show, list, update, rotate, revoke, reindex (what `extauthz token`
calls). Bulk import and export are in token_files.py.

A token's secret exists only in the return value of `create` and `rotate`; Redis keeps its
SHA-256 hash and record. Tokens are found by id through the index (storage/token_index.py).
A route's `max_token_ttl` (policy file) caps the life of every token for it.
"""

from __future__ import annotations

import difflib
import math
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from extauthz.admin import audit
from extauthz.core.budget import Budget
from extauthz.core.cidrs import AllowedCidrs
from extauthz.core.credentials import (
    MAX_NAME_LENGTH,
    ROUTE_NAME,
    SCOPE_NAME,
    TOKEN_ID,
    new_token,
    token_hash,
)
from extauthz.core.durations import MAX_SECONDS, format_duration, parse_duration
from extauthz.core.llm import check_model_patterns
from extauthz.core.policy import PolicySnapshot, RoutePolicy
from extauthz.core.rate_limit import RateLimit, ZeroLimit
from extauthz.core.token_limit import TokenLimit
from extauthz.core.token_record import (
    MANAGEMENT,
    MANAGEMENT_SCOPES,
    TEAM_ID,
    TEAM_ID_RULE,
    TokenRecord,
    kind_of,
)
from extauthz.errors import InvalidValue, MalformedRecord, UnknownRoute, UnknownTeam
from extauthz.storage.store import Store, utc_date
from extauthz.storage.token_index import Reindexed, TokenIndex

MAX_TTL_SECONDS = MAX_SECONDS


def parse_ttl(text: str, flag: str = "ttl") -> int:
    """`30s`, `15m`, `1h`, `7d` → seconds (at most a century)."""
    try:
        return parse_duration(text)
    except ValueError as e:
        raise InvalidValue(flag, text, str(e)) from None


def check_name(name: str) -> None:
    """A token's label: printable text (no control characters), at most 256 characters."""
    if len(name) > MAX_NAME_LENGTH or not name.isprintable():
        raise InvalidValue(
            "name",
            name,
            f"use printable text without control characters, at most {MAX_NAME_LENGTH}",
        )


def check_routes(routes: Iterable[str]) -> frozenset[str]:
    route_set = frozenset(routes)
    if not route_set:
        raise InvalidValue("route", None, "a token needs at least one ('*' for all routes)")
    for route in route_set:
        if route != "*" and not ROUTE_NAME.fullmatch(route):
            raise InvalidValue(
                "route", route, "use letters, digits, '.', '_', '-' (at most 128), or '*' for all"
            )
    return _fits("route", route_set)


def check_scopes(scopes: Iterable[str]) -> frozenset[str]:
    scope_set = frozenset(scopes)
    for scope in scope_set:
        if not SCOPE_NAME.fullmatch(scope):
            raise InvalidValue(
                "scope", scope, "use letters, digits, '.', '_', ':', '/', '-' (at most 128)"
            )
    return _fits("scope", scope_set)


def check_models(models: Iterable[str]) -> frozenset[str]:
    """LLM models a token may use: names and `prefix*` (core/llm.py)."""
    try:
        patterns = frozenset(check_model_patterns(models))
    except ValueError as e:
        raise InvalidValue("model", None, str(e)) from None
    for pattern in patterns:
        if len(pattern) > MAX_ITEM:  # (what a record holds: core/token_record.py)
            raise InvalidValue("model", pattern, f"at most {MAX_ITEM} characters in a token")
    return _fits("model", patterns)


MAX_ITEM = 128  # characters of one route, scope or model in a record
MAX_LIST = 4096  # characters of a record's list field, commas included


def check_cidrs(items: Iterable[str]) -> AllowedCidrs:
    """`--allow-cidr` values (API `allowed_cidrs`): 1 to 32 networks, strictly parsed."""
    try:
        return AllowedCidrs.parse(items)
    except ValueError as e:
        raise InvalidValue("allow-cidr", None, str(e)) from None


def _fits(flag: str, items: frozenset[str]) -> frozenset[str]:
    """Items a record can hold: a list field of at most MAX_LIST characters (a record
    beyond it would be refused when read, a token that only ever answers 401)."""
    if sum(len(item) + 1 for item in items) - 1 > MAX_LIST:
        raise InvalidValue(
            flag, f"{len(items)} items", f"at most {MAX_LIST} characters in all, commas included"
        )
    return items


def check_kind(scopes: frozenset[str]) -> str:
    """The kind of a token with `scopes` (token_record.kind_of): a management token carries
    only management scopes (`admin`, `tokens:manage`), a model token none of them."""
    kind = kind_of(scopes)
    if kind == MANAGEMENT and scopes - MANAGEMENT_SCOPES:
        raise InvalidValue(
            "scope",
            " ".join(sorted(scopes)),
            "a management token (admin, tokens:manage) works only at the management API and "
            "carries no model scopes: make two tokens",
        )
    return kind


Check = Callable[[TokenRecord], None]  # raises when the caller may not make this record


L = TypeVar("L")


def _limit_or_none(text: str, parse: Callable[[str], L], field: str, zero: str) -> L | None:
    """`parse(text)`; `none` → None (none of its own). A zero amount is refused with `zero`
    (what it would do, and what to give instead); any other mistake names the rule."""
    if text == "none":
        return None
    try:
        return parse(text)
    except ZeroLimit:
        raise InvalidValue(field, text, zero) from None
    except ValueError as e:
        raise InvalidValue(field, text, f"{e}, or none") from None


def parse_rate_limit(text: str) -> RateLimit | None:
    """`600/m` → RateLimit; `none` → None (no limit of its own). `0/m` is refused: it would
    refuse every request, and some read it as "no limit"."""
    return _limit_or_none(
        text, RateLimit.parse, "rate-limit",
        "0 would refuse every request (it does not mean no limit): give none (or nothing) "
        "for no limit of its own, or revoke the token to stop it",
    )  # fmt: skip


def parse_token_limit(text: str) -> TokenLimit | None:
    """`100000/d` → TokenLimit; `none` → None (no LLM token limit of its own). `0/d` is
    refused, as for rate limits."""
    return _limit_or_none(
        text, TokenLimit.parse, "token-limit",
        "0 would refuse every LLM request (it does not mean no limit): give none (or "
        "nothing) for no token limit of its own, or revoke the token to stop it",
    )  # fmt: skip


def parse_budget(text: str) -> Budget | None:
    """`50/mo`, `$0.25/h` → Budget; `none` → None (no budget of its own). An amount of 0 is
    refused, as for limits."""
    return _limit_or_none(
        text, Budget.parse, "budget",
        "0 would refuse every priced LLM request (it does not mean no budget): give none "
        "(or nothing) for no budget of its own, or revoke the token to stop it",
    )  # fmt: skip


def check_management_fields(
    kind: str, models: object, rate_limit: object, token_limit: object, budget: object = None
) -> None:
    """Models and limits mean nothing on a management token (it calls no model and is not
    counted): they are refused there, not kept to limit nothing."""
    if kind != MANAGEMENT:
        return
    for flag, value in (
        ("model", models),
        ("rate-limit", rate_limit),
        ("token-limit", token_limit),
        ("budget", budget),
    ):
        if value is not None:
            shown = ",".join(sorted(value)) if isinstance(value, (set, frozenset, list)) else value
            raise InvalidValue(
                flag, str(shown), f"a management token takes no --{flag} (it calls no model)"
            )


def check_team(store: Store, team_id: str) -> None:
    """The team must exist (UnknownTeam: `extauthz team create` it first)."""
    if not TEAM_ID.fullmatch(team_id):
        raise InvalidValue("team", team_id, TEAM_ID_RULE)
    if store.team_record(team_id) is None:
        raise UnknownTeam(team_id)


def check_id(token_id: str) -> str:
    if not TOKEN_ID.fullmatch(token_id):
        raise InvalidValue("id", token_id, "use letters, digits, '.', '_', '-' (at most 64)")
    return token_id


@dataclass(frozen=True, slots=True)
class Lifetime:
    """What the policy says about a token's life: the cap (the smallest `max_token_ttl`
    among its routes; for `*`, among every route)."""

    cap: int | None  # seconds
    capped_by: str  # the route whose cap it is

    @classmethod
    def of(cls, routes: Iterable[str], policy: PolicySnapshot | None) -> Lifetime:
        known: Mapping[str, RoutePolicy] = policy.routes if policy is not None else {}
        routes = sorted(routes)
        applying = (
            list(known.values()) if "*" in routes else [known[r] for r in routes if r in known]
        )
        caps = [(r.max_token_ttl, r.name) for r in applying if r.max_token_ttl is not None]
        cap, by = min(caps) if caps else (None, "")
        return cls(cap, by)

    def default(self, now: float) -> int | None:
        """The expires_at of a token given no ttl: the cap's full life, or never."""
        return None if self.cap is None else math.ceil(now + self.cap)

    def check(self, flag: str, given: str | None, expires: int | None, now: float) -> None:
        """Refuse an expires_at beyond the cap (`given`: what the user wrote for `flag`)."""
        if self.cap is not None and (expires is None or expires > math.ceil(now + self.cap)):
            cap = format_duration(self.cap)
            raise InvalidValue(
                flag,
                given,
                f"route {self.capped_by} allows tokens of at most {cap} (its max_token_ttl): "
                f"give a --ttl of {cap} or less",
            )


# --- a token's routes against the synced policy ---------------------------------------------
#
# A route the synced policy does not have is refused (a typo would mint a token that answers
# 404, possibly never expiring), unless the caller allows unknown routes: their policy comes
# later. With no policy synced at all every named route is unknown; `*` names none and is
# always accepted. LLM-only fields (models, token_limit) need a route that is an LLM route
# (`api: openai`): a known one, or, when unknown routes are allowed, one that may become
# one (an unknown route, or `*` for the routes a later policy adds).


def unknown_routes(
    routes: Iterable[str], policy: PolicySnapshot | None, allow_unknown: bool = False
) -> tuple[str, ...]:
    """The named routes the synced policy does not have (sorted); UnknownRoute for the first
    of them unless `allow_unknown`."""
    known: Mapping[str, RoutePolicy] = policy.routes if policy is not None else {}
    unknown = tuple(sorted(r for r in routes if r != "*" and r not in known))
    if unknown and not allow_unknown:
        route = unknown[0]
        if policy is None:
            raise UnknownRoute(
                route,
                f"{route} is not a known route: no policy has been synced yet",
                "run `extauthz sync POLICY.yaml` first",
            )
        close = difflib.get_close_matches(route, list(known), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise UnknownRoute(
            route,
            f"{route} is not a route of the synced policy (version {policy.version}{hint})",
            "fix the name",
        )
    return unknown


def unknown_route_warnings(
    unknown: tuple[str, ...], policy: PolicySnapshot | None
) -> tuple[str, ...]:
    """What a token for allowed unknown routes is told."""
    if policy is None:
        return tuple(
            f"route {r} is not checked: no policy has been synced yet (a token for it answers "
            "404 until a policy has it)"
            for r in unknown
        )
    return tuple(
        f"route {r} is not in the synced policy (a token for it answers 404 until it is)"
        for r in unknown
    )


def check_llm_fields(
    routes: frozenset[str],
    policy: PolicySnapshot | None,
    models: frozenset[str] | None,
    token_limit: TokenLimit | None,
    allow_unknown: bool = False,
    field: str | None = None,
    budget: Budget | None = None,
) -> tuple[str, ...]:
    """Refuse `models`, `token_limit` or `budget` on a token none of whose routes is an LLM
    route (`api: openai`), unless `allow_unknown` and a route may become one (then a
    warning). `field`: the field to name (default: the LLM field given)."""
    if models is None and token_limit is None and budget is None:
        return ()
    known: Mapping[str, RoutePolicy] = policy.routes if policy is not None else {}
    llm = policy.llm_routes if policy is not None else frozenset()
    if routes & llm or ("*" in routes and llm):
        return ()
    maybe = sorted(r for r in routes if r not in known)  # unknown, and `*` (routes to come)
    if allow_unknown and maybe:
        return (
            "its token limit and models take effect only on LLM routes (api: openai), and none "
            f"of its routes is one yet: they do once {' or '.join(maybe)} is one",
        )
    if field is None:
        field = "token-limit" if token_limit is not None else "budget" if budget else "model"
    value = {
        "token-limit": str(token_limit),
        "budget": str(budget),
        "model": ",".join(sorted(models or ())),
    }.get(field, ",".join(sorted(routes)))
    grants = "every route of the synced policy" if "*" in routes else ", ".join(sorted(routes))
    raise InvalidValue(
        field,
        value,
        f"token limits, budgets and models apply only on LLM routes (api: openai in the "
        f"policy), and none of its routes ({grants}) is one: leave them out (none, all models), "
        "or give the token an LLM route",
    )


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A token secret together with its record: shown once, never stored."""

    token: str
    record: TokenRecord
    unconfirmed: tuple[str, ...] = ()  # rotate: live servers that did not confirm in time
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Revoked:
    count: int  # secrets deleted (the token's, and one in rotation grace)
    unconfirmed: tuple[str, ...]  # live servers that did not confirm dropping them in time
    warnings: tuple[str, ...] = ()


def _also(warning: str | None) -> tuple[str, ...]:
    return () if warning is None else (warning,)


@dataclass(frozen=True, slots=True)
class Updated:
    record: TokenRecord
    unconfirmed: tuple[str, ...]
    warnings: tuple[str, ...] = ()


def create(
    store: Store,
    routes: Iterable[str],
    scopes: Iterable[str] = (),
    ttl_seconds: int | None = None,
    name: str = "",
    now: float = 0,
    token_id: str | None = None,
    rate_limit: RateLimit | None = None,
    actor: str | None = None,
    not_after: int | None = None,
    check: Check | None = None,
    models: Iterable[str] | None = None,
    token_limit: TokenLimit | None = None,
    allow_unknown_route: bool = False,
    team: str | None = None,
    budget: Budget | None = None,
    allowed_cidrs: Iterable[str] | None = None,
) -> IssuedToken:
    """Mint a token for `routes` (or `*`) with `scopes`, expiring after ttl (or the routes'
    max_token_ttl; else never). `not_after`: without a ttl it expires then at the latest
    (a manager's own expiry); `check(record)` may refuse the record before it is written.
    A route the synced policy does not have, and LLM fields without an LLM route, are
    refused unless `allow_unknown_route` (see `unknown_routes`). `team`: an existing team's
    id (its models and limits apply too). `allowed_cidrs`: the client networks it may be
    used from (None: any)."""
    route_set, scope_set = check_routes(routes), check_scopes(scopes)
    cidrs = None if allowed_cidrs is None else check_cidrs(allowed_cidrs)
    kind = check_kind(scope_set)
    check_management_fields(kind, models, rate_limit, token_limit, budget)
    check_name(name)
    token_id = check_id(token_id) if token_id is not None else "tok_" + secrets.token_hex(6)
    if ttl_seconds is not None and not 0 < ttl_seconds <= MAX_TTL_SECONDS:
        raise InvalidValue("ttl", f"{ttl_seconds}s", "from 1s to 36500d")
    model_set = None if models is None else check_models(models)
    policy = store.load_policy()
    life = Lifetime.of(route_set, policy)
    default = life.default(now)
    if not_after is not None:
        default = not_after if default is None else min(default, not_after)
    record = TokenRecord(
        id=token_id,
        routes=route_set,
        scopes=scope_set,
        expires_at=_expiry(life, "ttl", ttl_seconds, default, now),
        name=name,
        created_at=int(now),
        rate_limit=rate_limit,
        kind=kind,
        models=model_set,
        token_limit=token_limit,
        team=team,
        budget=budget,
        allowed_cidrs=cidrs,
    )
    if check is not None:
        check(record)  # (may the caller make it at all: before whether it is right)
    if team is not None:
        check_team(store, team)
    unknown = unknown_routes(route_set, policy, allow_unknown_route)
    warnings = unknown_route_warnings(unknown, policy)
    warnings += check_llm_fields(
        route_set, policy, model_set, token_limit, allow_unknown_route, budget=budget
    )
    token = new_token()
    TokenIndex(store).add(token_hash(token), record)
    audited = audit.record(store, actor, "token.create", token_id, described(record), now)
    return IssuedToken(token, record, warnings=warnings + _also(audited))


def described(record: TokenRecord) -> dict[str, Any]:
    """A record for the audit log (names and times: never a secret or a hash)."""
    return {
        "routes": sorted(record.routes),
        "scopes": sorted(record.scopes),
        "name": record.name,
        "expires_at": record.expires_at,
        "rate_limit": str(record.rate_limit) if record.rate_limit else None,
        "kind": record.kind,
        "models": None if record.models is None else sorted(record.models),
        "token_limit": str(record.token_limit) if record.token_limit else None,
        "team": record.team,
        "budget": str(record.budget) if record.budget else None,
        "allowed_cidrs": record.allowed_cidrs.texts() if record.allowed_cidrs else None,
    }


def show(store: Store, token_id: str) -> TokenRecord:
    return TokenIndex(store).get(token_id).record


def listing(
    store: Store, route: str | None = None, limit: int | None = None
) -> Iterator[tuple[str, TokenRecord | MalformedRecord]]:
    """Indexed tokens as (hash, record or its error) in creation order, streamed; `route`:
    only those that grant it (malformed records are always listed, so they can be fixed)."""
    shown = 0
    for _, digest, record in TokenIndex(store).stream():
        if limit is not None and shown >= limit:
            return
        if route is None or isinstance(record, MalformedRecord) or record.grants_route(route):
            shown += 1
            yield digest, record


def update(
    store: Store,
    token_id: str,
    *,
    routes: Iterable[str] | None = None,
    scopes: Iterable[str] | None = None,
    name: str | None = None,
    ttl_seconds: int | None = None,
    no_expiry: bool = False,
    rate_limit: RateLimit | str | None = "keep",
    now: float = 0,
    confirm: float = 0,
    actor: str | None = None,
    check: Callable[[TokenRecord, TokenRecord], None] | None = None,
    models: Iterable[str] | str | None = "keep",
    token_limit: TokenLimit | str | None = "keep",  # noqa: S107 (not a secret)
    allow_unknown_route: bool = False,
    team: str | None = "keep",
    budget: Budget | str | None = "keep",
    allowed_cidrs: Iterable[str] | str | None = "keep",
) -> Updated:
    """Change a token's record (not its secret); every server drops its cached copy.
    `rate_limit`, `token_limit`, `budget`: a limit, None (remove it) or "keep"; `models`: names and
    patterns, None (any model) or "keep". `check(current, new)` may refuse
    the change; it runs inside the transaction, on the record as it is then. A token's kind
    (model or management) never changes. New routes the synced policy does not have, and
    LLM fields given or kept without an LLM route, are refused as by `create`. `team`: an
    existing team's id, None (no team) or "keep". `allowed_cidrs`: networks, None (any
    address) or "keep"."""
    route_set = check_routes(routes) if routes is not None else None
    keep_cidrs = isinstance(allowed_cidrs, str)
    cidrs = None if keep_cidrs or allowed_cidrs is None else check_cidrs(allowed_cidrs)
    model_set = check_models(models) if models is not None and not isinstance(models, str) else None
    scope_set = check_scopes(scopes) if scopes is not None else None
    if name is not None:
        check_name(name)
    if ttl_seconds is not None and no_expiry:
        raise InvalidValue("no-expiry", "", "give --ttl or --no-expiry, not both")
    policy = store.load_policy()
    new_llm_field = (
        model_set is not None or isinstance(token_limit, TokenLimit) or isinstance(budget, Budget)
    )
    warned: list[str] = []

    def change(record: TokenRecord) -> TokenRecord:
        new_routes = route_set if route_set is not None else record.routes
        life = Lifetime.of(new_routes, policy)
        if no_expiry:
            life.check("no-expiry", "", None, now)
            expires = None
        else:
            expires = _expiry(life, "ttl", ttl_seconds, record.expires_at, now)
        new = replace(
            record,
            routes=new_routes,
            scopes=scope_set if scope_set is not None else record.scopes,
            name=name if name is not None else record.name,
            expires_at=expires,
            rate_limit=record.rate_limit if isinstance(rate_limit, str) else rate_limit,
            models=record.models if isinstance(models, str) else model_set,
            token_limit=record.token_limit if isinstance(token_limit, str) else token_limit,
            team=record.team if team == "keep" else team,
            budget=record.budget if isinstance(budget, str) else budget,
            allowed_cidrs=record.allowed_cidrs if keep_cidrs else cidrs,
        )
        check_management_fields(
            record.kind, new.models, new.rate_limit, new.token_limit, new.budget
        )
        if scope_set is not None and check_kind(scope_set) != record.kind:
            raise InvalidValue(
                "scope",
                " ".join(sorted(scope_set)),
                f"{record.id} is a {record.kind} token and stays one: make a new token for "
                "the other kind (a token made before kinds existed: run `extauthz token reindex`)",
            )
        if check is not None:
            check(record, new)  # (may the caller make it at all: before whether it is right)
        if team is not None and team not in ("keep", record.team):
            check_team(store, team)
        warned.clear()
        if route_set is not None:
            unknown = unknown_routes(route_set, policy, allow_unknown_route)
            warned.extend(unknown_route_warnings(unknown, policy))
        if route_set is not None or new_llm_field:  # (an unrelated change is not refused)
            field = "model" if model_set is not None else None if new_llm_field else "route"
            warned.extend(
                check_llm_fields(
                    new.routes,
                    policy,
                    new.models,
                    new.token_limit,
                    allow_unknown_route,
                    field,
                    new.budget,
                )
            )
        return new

    new, unconfirmed = TokenIndex(store).update(token_id, change, confirm)
    audited = audit.record(store, actor, "token.update", token_id, described(new), now)
    return Updated(new, tuple(unconfirmed), tuple(warned) + _also(audited))


def _expiry(
    life: Lifetime, flag: str, ttl: int | None, otherwise: int | None, now: float
) -> int | None:
    """`now + ttl` (rounded up: never before the full ttl has passed), else `otherwise`;
    checked against the cap."""
    expires = math.ceil(now + ttl) if ttl is not None else otherwise
    life.check(flag, format_duration(ttl) if ttl is not None else None, expires, now)
    return expires


def rotate(
    store: Store,
    token_id: str,
    confirm: float = 0,
    grace_seconds: int | None = None,
    now: float = 0,
    actor: str | None = None,
    check: Callable[[TokenRecord | None], None] | None = None,
) -> IssuedToken:
    """A new secret for the same id and record. The old secret stops at once, or after
    `grace_seconds` (confirmed by every live server within `confirm` s, as for `revoke`).
    `check(record)` may refuse it (inside the transaction, on the record as it is then)."""
    index = TokenIndex(store)
    grace_until = None
    if grace_seconds is not None:
        record = index.get(token_id).record
        left = None if record.expires_at is None else record.expires_at - now
        if left is not None and grace_seconds >= left:
            raise InvalidValue(
                "grace",
                format_duration(grace_seconds),
                f"longer than the token's remaining life ({format_duration(max(left, 0))}): "
                "rotate without --grace, or give a shorter one",
            )
        grace_until = math.ceil(now + grace_seconds)
    token = new_token()
    record, unconfirmed = index.rotate(token_id, token_hash(token), grace_until, confirm, check)
    durable = store.replicated(confirm or 1.0)
    detail = {"grace_until": grace_until}
    audited = audit.record(store, actor, "token.rotate", token_id, detail, now)
    return IssuedToken(token, record, tuple(unconfirmed), _also(durable) + _also(audited))


def revoke(
    store: Store,
    token_id: str,
    confirm: float = 0,
    actor: str | None = None,
    check: Callable[[TokenRecord | None], None] | None = None,
) -> Revoked:
    """Delete the token (and a secret of it still in rotation grace); `check(record)` may
    refuse it, inside the transaction (None: a record that cannot be read).

    With `confirm` > 0, return only once every live server has confirmed that it dropped
    them from its cache, or after `confirm` seconds (those that did not are named). It also
    waits (as long) for a replica to hold the deletion, so that a failover cannot bring the
    token back; without one it warns.
    """
    count, unconfirmed = TokenIndex(store).revoke(token_id, confirm, check)
    durable = store.replicated(confirm or 1.0)
    audited = audit.record(store, actor, "token.revoke", token_id, {"secrets": count})
    return Revoked(count, tuple(unconfirmed), _also(durable) + _also(audited))


def usage(store: Store, token_id: str, days: int, now: float) -> dict[str, Any]:
    """A token's allowed and rate-limited requests for the last `days` UTC days (oldest
    first, today last) and its last use. A token revoked since is still reported while its
    counts are kept; an id nobody has used or holds is UnknownToken."""
    today = int(now // 86400)
    asked = list(range(today - days + 1, today + 1))
    rows = store.usage(token_id, asked)
    per_model = store.model_usage(token_id, asked)
    per_tokens = store.llm_token_usage(token_id, asked)
    (last,) = store.last_used([token_id])
    if last is None and not any(a or r for _, a, r in rows):
        TokenIndex(store).get(token_id)  # unknown: says so (and names reindex)
    return {
        "id": token_id,
        "last_used": last,
        "days": [
            {
                "date": utc_date(day),
                "allowed": allowed,
                "rate_limited": limited,
                **_models_of(models, charged),
            }
            for (day, allowed, limited), models, charged in zip(
                rows, per_model, per_tokens, strict=True
            )
        ],
    }


def _models_of(
    requests: dict[str, int], charged: dict[str, dict[str, int]]
) -> dict[str, dict[str, dict[str, int]]]:
    """A day's per-model usage: requests, and LLM tokens when responses were counted."""
    names = sorted(set(requests) | set(charged))
    if not names:
        return {}
    return {"models": {m: _model_day(requests.get(m, 0), charged.get(m, {})) for m in names}}


def _model_day(requests: int, charged: dict[str, int]) -> dict[str, Any]:
    """One model's day: requests, its LLM tokens, and their cost in USD (not micro-dollars)."""
    out: dict[str, Any] = {"requests": requests, **charged}
    cost = out.pop("cost_microusd", None)
    if cost is not None:
        out["cost_usd"] = cost / 1e6
    return out


def reindex(store: Store, actor: str | None = None) -> Reindexed:
    """Index the tokens made by hand; drop entries whose token is gone."""
    result = TokenIndex(store).reindex()
    if result.added or result.removed or result.marked_management:
        detail = {
            "added": result.added,
            "removed": result.removed,
            "marked_management": result.marked_management,
        }
        warning = audit.record(store, actor, "token.reindex", "", detail)
        if warning is not None:
            result.warnings.append(warning)
    return result
