"""Credentials, pure: parse an Authorization header, the token format and hashing, and the
patterns names must follow (token ids, routes, scopes). Nothing here does I/O."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
from dataclasses import dataclass

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
