"""Token lifecycle: create, list, show, revoke, rotate (what the `extauthz token` CLI calls).

A token's secret exists only in the return value of `create` and `rotate`; Redis keeps its
SHA-256 hash and record.
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from extauthz.core.credentials import (
    MAX_NAME_LENGTH,
    ROUTE_NAME,
    SCOPE_NAME,
    TOKEN_ID,
    new_token,
    token_hash,
)
from extauthz.core.token_record import TokenRecord
from extauthz.errors import AmbiguousToken, InvalidValue, MalformedRecord, UnknownToken
from extauthz.storage.store import Store

_TTL = re.compile(r"([0-9]{1,12})([smhd])", re.ASCII)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_TTL_SECONDS = 100 * 365 * 86400  # a century: anything longer is a typo, not a policy


def parse_ttl(text: str) -> int:
    """`30s`, `15m`, `1h`, `7d` → seconds (at most a century)."""
    m = _TTL.fullmatch(text)
    if not m or int(m.group(1)) == 0:
        raise InvalidValue("ttl", text, "use a positive number with s, m, h or d (e.g. 1h)")
    seconds = int(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    if seconds > MAX_TTL_SECONDS:
        raise InvalidValue(
            "ttl", text, "at most 36500d (100 years); without a ttl the token never expires"
        )
    return seconds


def check_name(name: str) -> None:
    """A token's label: printable text (no control characters), at most 256 characters."""
    if len(name) > MAX_NAME_LENGTH or not name.isprintable():
        raise InvalidValue(
            "name",
            name,
            f"use printable text without control characters, at most {MAX_NAME_LENGTH}",
        )


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A token secret together with its record: shown once, never stored."""

    token: str
    record: TokenRecord
    unconfirmed: tuple[str, ...] = ()  # rotate: live servers that did not confirm in time


@dataclass(frozen=True, slots=True)
class Revoked:
    count: int  # tokens deleted
    unconfirmed: tuple[str, ...]  # live servers that did not confirm dropping them in time


def create(
    store: Store,
    routes: Iterable[str],
    scopes: Iterable[str] = (),
    ttl_seconds: int | None = None,
    name: str = "",
    now: float = 0,
    token_id: str | None = None,
) -> IssuedToken:
    """Mint a token for `routes` (or `*`) with `scopes`, optionally expiring after ttl."""
    route_set = frozenset(routes)
    scope_set = frozenset(scopes)
    if not route_set:
        raise InvalidValue("route", None, "a token needs at least one ('*' for all routes)")
    for route in route_set:
        if route != "*" and not ROUTE_NAME.fullmatch(route):
            raise InvalidValue(
                "route", route, "use letters, digits, '.', '_', '-' (at most 128), or '*' for all"
            )
    for scope in scope_set:
        if not SCOPE_NAME.fullmatch(scope):
            raise InvalidValue(
                "scope", scope, "use letters, digits, '.', '_', ':', '/', '-' (at most 128)"
            )
    check_name(name)
    if token_id is None:
        token_id = "tok_" + secrets.token_hex(6)
    elif not TOKEN_ID.fullmatch(token_id):
        raise InvalidValue("id", token_id, "use letters, digits, '.', '_', '-' (at most 64)")
    if ttl_seconds is not None and not 0 < ttl_seconds <= MAX_TTL_SECONDS:
        raise InvalidValue("ttl", f"{ttl_seconds}s", "from 1s to 36500d")
    record = TokenRecord(
        id=token_id,
        routes=route_set,
        scopes=scope_set,
        # rounded up: a token never expires before its full ttl has passed
        expires_at=math.ceil(now + ttl_seconds) if ttl_seconds else None,
        name=name,
        created_at=int(now),
    )
    token = new_token()
    store.put_token(token_hash(token), record)
    return IssuedToken(token, record)


def list_tokens(store: Store) -> list[tuple[str, TokenRecord | MalformedRecord]]:
    """Every token as (hash, record); malformed records are listed with their error."""
    return list(store.iter_tokens())


def show(store: Store, token_id: str) -> TokenRecord:
    return _one(store, token_id)[1]


def revoke(store: Store, token_id: str, confirm: float = 0) -> Revoked:
    """Delete every token with this id.

    With `confirm` > 0, return only once every live server has confirmed that it dropped
    them from its cache, or after `confirm` seconds (those that did not are named).
    """
    found = store.find_tokens(token_id)
    if not found:
        raise UnknownToken(token_id)
    count, unconfirmed = store.delete_tokens([digest for digest, _ in found], confirm)
    return Revoked(count, tuple(unconfirmed))


def rotate(store: Store, token_id: str, confirm: float = 0) -> IssuedToken:
    """A new secret for the same id and record; the old secret stops working at once
    (confirmed by every live server within `confirm` seconds, as for `revoke`)."""
    old_digest, record = _one(store, token_id)
    token = new_token()
    unconfirmed = store.replace_token(old_digest, token_hash(token), record, confirm)
    return IssuedToken(token, record, tuple(unconfirmed))


def _one(store: Store, token_id: str) -> tuple[str, TokenRecord]:
    found = store.find_tokens(token_id)
    if not found:
        raise UnknownToken(token_id)
    if len(found) > 1:
        raise AmbiguousToken(token_id, len(found))
    return found[0]
