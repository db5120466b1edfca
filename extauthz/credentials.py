"""Credentials, pure: parse an Authorization header, the token format, hashing, token records.

Nothing here does I/O. The token record's field layout is the documented Redis data model
(README, "Redis data model"): `store` reads and writes it, this module gives it meaning.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

from extauthz.errors import MalformedRecord

TOKEN_PREFIX = "eat_"  # noqa: S105 (a prefix, not a password)
TOKEN_BYTES = 32  # 256 bits of randomness
# Longer Authorization values are refused before any parsing or hashing (a JWT with many
# claims stays well below this).
MAX_AUTHORIZATION_LENGTH = 8192

# RFC 7235 token68: what a Bearer token may consist of. A comma (several joined headers)
# or a space inside the credential makes it malformed.
_TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]+=*")

# Names that enter through the CLI, the policy file and imports (ASCII only: re.ASCII).
TOKEN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,63}", re.ASCII)
ROUTE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,127}", re.ASCII)
SCOPE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/\-]{0,127}", re.ASCII)
MAX_NAME_LENGTH = 256  # a token's human label

# What a record edited by hand may hold: its values become header values (subject, scopes)
# and terminal output, so they are visible ASCII (id, list items) or printable text (name).
_VISIBLE = re.compile(r"[!-~]{1,128}", re.ASCII)
_LIST_FIELD = re.compile(r"[ !-~]{0,4096}", re.ASCII)
MAX_UNIX_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z: the last second a date can show


@dataclass(frozen=True, slots=True)
class NoCredential:
    """The request carries no Authorization header."""


@dataclass(frozen=True, slots=True)
class MalformedCredential:
    """An Authorization header that cannot be parsed; `reason` never contains the secret."""

    reason: str


@dataclass(frozen=True, slots=True)
class UnsupportedScheme:
    """A well-formed header with a scheme we do not accept (e.g. Digest)."""

    scheme: str


@dataclass(frozen=True, slots=True)
class BearerCredential:
    token: str


@dataclass(frozen=True, slots=True)
class BasicCredential:
    username: str
    password: str


Credential = (
    NoCredential | MalformedCredential | UnsupportedScheme | BearerCredential | BasicCredential
)

NO_CREDENTIAL = NoCredential()


def parse_authorization(value: str | None) -> Credential:
    """Parse an Authorization header value (`None` when the header is absent)."""
    if value is None:
        return NO_CREDENTIAL
    if len(value) > MAX_AUTHORIZATION_LENGTH:
        return MalformedCredential("authorization header too long")
    if not value.isascii():
        return MalformedCredential("authorization header is not ASCII")
    scheme, _, rest = value.strip().partition(" ")
    if not scheme:
        return MalformedCredential("empty authorization header")
    rest = rest.strip()
    if not rest:
        return MalformedCredential("authorization header has no scheme or no credential")
    kind = scheme.lower()
    if kind == "bearer":
        if not _TOKEN68.fullmatch(rest):
            return MalformedCredential("bearer token has invalid characters")
        return BearerCredential(rest)
    if kind == "basic":
        return _parse_basic(rest)
    return UnsupportedScheme(kind)


def _parse_basic(encoded: str) -> Credential:
    try:
        raw = base64.b64decode(encoded, validate=True)
        text = raw.decode("utf-8")
    except (binascii.Error, ValueError):
        return MalformedCredential("basic credential is not valid base64 of UTF-8 text")
    username, colon, password = text.partition(":")
    if not colon:
        return MalformedCredential("basic credential has no colon")
    if not password:
        return MalformedCredential("basic credential has an empty password")
    return BasicCredential(username, password)


def new_token() -> str:
    """A fresh random token: the `eat_` prefix and 256 bits, URL-safe base64."""
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def token_hash(token: str) -> str:
    """The SHA-256 of the token's UTF-8 bytes as lowercase hex: its key in Redis."""
    return hashlib.sha256(token.encode()).hexdigest()


def looks_like_jwt(token: str) -> bool:
    """True for a compact JWS (three base64url parts, header a JSON object)."""
    return token.startswith("eyJ") and token.count(".") == 2


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """What Redis knows about one token (never the token itself)."""

    id: str
    routes: frozenset[str]  # route names, or "*" for every route
    scopes: frozenset[str]
    expires_at: int | None = None  # unix seconds
    name: str = ""
    created_at: int | None = None
    # unix seconds when Redis will expire the key (its TTL when it was read): a key given a
    # TTL by hand (EXPIRE) stops working then, even before Redis gets round to deleting it
    lapses_at: float | None = field(default=None, compare=False)

    def grants_route(self, route: str) -> bool:
        return route in self.routes or "*" in self.routes

    def expired(self, now: float) -> bool:
        return now >= self.valid_until()

    def valid_until(self) -> float:
        """The first moment the token no longer works (inf: never)."""
        until = float("inf") if self.expires_at is None else float(self.expires_at)
        return until if self.lapses_at is None else min(until, self.lapses_at)

    def to_fields(self) -> dict[str, str]:
        """The Redis hash fields, as documented in the README."""
        fields = {
            "id": self.id,
            "routes": ",".join(sorted(self.routes)),
            "scopes": ",".join(sorted(self.scopes)),
        }
        if self.name:
            fields["name"] = self.name
        if self.created_at is not None:
            fields["created_at"] = str(self.created_at)
        if self.expires_at is not None:
            fields["expires_at"] = str(self.expires_at)
        return fields

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> TokenRecord:
        """Read a record from its Redis hash fields; raise MalformedRecord if it is off-shape.

        Records may be written by hand, so every value is checked for what it becomes: the id
        and the list items are visible ASCII of at most 128 characters (they become header
        values), the name printable text of at most 256, the times unix seconds up to the
        year 9999. Bytes that were not UTF-8 arrive as lone surrogates and fail these checks.
        """
        token_id = fields.get("id", "").strip(" ")
        if not token_id:
            raise MalformedRecord("token record has no 'id' field")
        if not _VISIBLE.fullmatch(token_id):
            raise MalformedRecord(
                f"token record id {_shown(token_id)}: not 1-128 visible ASCII characters"
            )
        if "routes" not in fields:
            raise MalformedRecord(f"token record {token_id!r} has no 'routes' field")
        name = fields.get("name", "")
        if len(name) > MAX_NAME_LENGTH or not name.isprintable():
            raise MalformedRecord(
                f"token record {token_id!r}: 'name' is not printable text of at most "
                f"{MAX_NAME_LENGTH} characters"
            )
        return cls(
            id=token_id,
            routes=_list_field(fields, "routes", token_id),
            scopes=_list_field(fields, "scopes", token_id),
            expires_at=_int_field(fields, "expires_at", token_id),
            name=name,
            created_at=_int_field(fields, "created_at", token_id),
        )


def split_list(value: str) -> frozenset[str]:
    """Split a list field: items separated by commas and/or spaces."""
    return frozenset(value.replace(",", " ").split(" ")) - {""}


def _shown(value: str) -> str:
    """A value from a record, safe to put in a message: escaped, and cut at 64 characters."""
    return ascii(value[:64]) + ("…" if len(value) > 64 else "")


def _list_field(fields: Mapping[str, str], key: str, token_id: str) -> frozenset[str]:
    raw = fields.get(key, "")
    items = split_list(raw) if _LIST_FIELD.fullmatch(raw) else None
    if items is None or not all(_VISIBLE.fullmatch(item) for item in items):
        raise MalformedRecord(
            f"token record {token_id!r}: {key!r} is not a list of visible ASCII names "
            "(comma or space separated, each at most 128 characters, 4096 in all)"
        )
    return items


def _int_field(fields: Mapping[str, str], key: str, token_id: str) -> int | None:
    raw = fields.get(key, "").strip(" ")
    if not raw:
        return None
    try:
        value = int(float(raw)) if raw.isascii() else None
    except (ValueError, OverflowError):
        value = None
    if value is None or not 0 <= value <= MAX_UNIX_SECONDS:
        raise MalformedRecord(
            f"token record {token_id!r}: {key!r} is not unix seconds up to the year 9999: "
            f"{_shown(raw)}"
        )
    return value
