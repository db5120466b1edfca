"""Credentials, pure: parse an Authorization header, the token format and hashing, and the
patterns names must follow (token ids, routes, scopes). Nothing here does I/O."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
import string
import zlib
from dataclasses import dataclass

TOKEN_PREFIX = "eat_"  # noqa: S105 (a prefix, not a password)
# The secret format (docs/tokens.md#secret-format): `eat_`, 32 random base62 characters
# (190 bits), then 6 base62 characters of the CRC32 of those 32. A secret of exactly this
# shape whose checksum fails is refused without a lookup. Secrets minted before it are
# `eat_` + 43 URL-safe base64 characters (47 in all, never 42): they keep working.
BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase  # 0-9A-Za-z
TOKEN_RANDOM_CHARS = 32
TOKEN_CHECKSUM_CHARS = 6
TOKEN_LENGTH = len(TOKEN_PREFIX) + TOKEN_RANDOM_CHARS + TOKEN_CHECKSUM_CHARS  # 42
CHECKSUMMED_TOKEN = re.compile(r"eat_[0-9A-Za-z]{38}", re.ASCII)
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
    """A fresh random token: `eat_`, 32 random base62 characters and their checksum."""
    body = "".join(secrets.choice(BASE62) for _ in range(TOKEN_RANDOM_CHARS))
    return TOKEN_PREFIX + body + token_checksum(body)


def token_checksum(body: str) -> str:
    """The 6 characters that end a secret: the CRC32 (zlib's, IEEE 802.3) of `body`'s ASCII
    bytes (the 32 random characters, not the prefix) in base62, most significant first,
    padded with leading `0`s (62**6 > 2**32)."""
    high, low = divmod(zlib.crc32(body.encode("ascii")), 3844)
    high, middle = divmod(high, 3844)  # (high < 3844: 62**6 > 2**32)
    return _BASE62_PAIRS[high] + _BASE62_PAIRS[middle] + _BASE62_PAIRS[low]


_BASE62_PAIRS = [a + b for a in BASE62 for b in BASE62]  # 3844 = 62**2 two-digit numerals


def checksum_fails(secret: str) -> bool:
    """True for a secret of the checksummed form (exactly `eat_` + 38 base62 characters)
    whose last 6 characters are not the checksum of the 32 before them: it cannot be one
    we minted, so it is refused without looking it up. False for any other secret (older
    tokens, route secrets, a valid checksum)."""
    if len(secret) != TOKEN_LENGTH or not CHECKSUMMED_TOKEN.fullmatch(secret):
        return False
    cut = TOKEN_LENGTH - TOKEN_CHECKSUM_CHARS
    return secret[cut:] != token_checksum(secret[len(TOKEN_PREFIX) : cut])


def token_hash(token: str) -> str:
    """The SHA-256 of the token's UTF-8 bytes as lowercase hex: its key in Redis."""
    return hashlib.sha256(token.encode()).hexdigest()


def looks_like_jwt(token: str) -> bool:
    """True for a compact JWS (three base64url parts, header a JSON object)."""
    return token.startswith("eyJ") and token.count(".") == 2
