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

from extauthz.credentials import TokenRecord, new_token, token_hash
from extauthz.errors import MalformedRecord, UsageError
from extauthz.store import Store

_TTL = re.compile(r"(\d+)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,63}")
_NAME = re.compile(r"[A-Za-z0-9*][A-Za-z0-9._\-]{0,127}")


def parse_ttl(text: str) -> int:
    """`30s`, `15m`, `1h`, `7d` → seconds."""
    m = _TTL.fullmatch(text.strip())
    if not m or int(m.group(1)) == 0:
        raise UsageError(
            f"invalid --ttl {text!r}: use a positive number with s, m, h or d (e.g. 1h)"
        )
    return int(m.group(1)) * _UNIT_SECONDS[m.group(2)]


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A token secret together with its record: shown once, never stored."""

    token: str
    record: TokenRecord


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
    if not route_set:
        raise UsageError("a token needs at least one --route (or --route '*' for all routes)")
    for value in (*route_set, *scopes):
        if not _NAME.fullmatch(value):
            raise UsageError(
                f"invalid route or scope {value!r}: use letters, digits, '.', '_', '-'"
            )
    if token_id is None:
        token_id = "tok_" + secrets.token_hex(6)
    elif not _ID.fullmatch(token_id):
        raise UsageError(f"invalid token id {token_id!r}: use letters, digits, '.', '_', '-'")
    record = TokenRecord(
        id=token_id,
        routes=route_set,
        scopes=frozenset(scopes),
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


def revoke(store: Store, token_id: str) -> int:
    """Delete every token with this id; returns how many were deleted."""
    found = store.find_tokens(token_id)
    if not found:
        raise _unknown(token_id)
    return sum(store.delete_token(digest) for digest, _ in found)


def rotate(store: Store, token_id: str) -> IssuedToken:
    """A new secret for the same id and record; the old secret stops working at once."""
    old_digest, record = _one(store, token_id)
    token = new_token()
    store.replace_token(old_digest, token_hash(token), record)
    return IssuedToken(token, record)


def _one(store: Store, token_id: str) -> tuple[str, TokenRecord]:
    found = store.find_tokens(token_id)
    if not found:
        raise _unknown(token_id)
    if len(found) > 1:
        raise UsageError(
            f"{len(found)} tokens have id {token_id!r}: revoke them and create a new one"
        )
    return found[0]


def _unknown(token_id: str) -> UsageError:
    return UsageError(f"no token with id {token_id!r} (see `extauthz token list`)")
