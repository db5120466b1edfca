"""JWT verification, pure: (token, route settings, key set, now) → identity or rejection.

No I/O and no clock here: key sets come from jwks_keys.py (parsed) and runtime/jwks.py
(fetched and cached); runtime/jwt_verifier.py calls `verify_with_keys`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from extauthz.core.jwks_keys import KeySet
from extauthz.core.llm import check_model_patterns
from extauthz.core.route_policy import JwtSettings


@dataclass(frozen=True, slots=True)
class JwtIdentity:
    subject: str
    scopes: frozenset[str]
    headers: tuple[tuple[str, str], ...]  # forwarded claims
    expires_at: float
    models: frozenset[str] | None = None  # from `models_claim` (None: no such setting)
    team: str | None = None  # from `team_claim` (None: no team named); as sent, not checked


@dataclass(frozen=True, slots=True)
class JwtRejected:
    """The token is not acceptable (→ 401). `reason` is fixed text, never token content."""

    reason: str


@dataclass(frozen=True, slots=True)
class JwtUnavailable:
    """The route's keys could not be fetched yet (→ 503)."""

    reason: str


JwtResult = JwtIdentity | JwtRejected | JwtUnavailable
JwtVerify = Callable[[str, JwtSettings, float], JwtResult]
UNKNOWN_KEY = JwtRejected("unknown signing key")


# --- verification (pure) ----------------------------------------------------------------------


def claim(claims: Mapping[str, Any], path: str) -> Any:
    """A claim by dotted path (`realm_access.roles`); None when absent."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _header_safe(text: str) -> bool:
    return bool(text) and all(" " <= c <= "~" for c in text)


def scopes_from(value: Any) -> frozenset[str]:
    """`scope` (space-separated string) or a list (`scp`, `roles`, `groups`) → scopes."""
    items = value.split() if isinstance(value, str) else value if isinstance(value, list) else ()
    return frozenset(
        s for s in items if isinstance(s, str) and _header_safe(s) and "," not in s and " " not in s
    )


def models_from(value: Any) -> frozenset[str]:
    """A models claim (a list, or a space-separated string) → the model names and patterns
    it allows; items that are not valid names are dropped (absent: none allowed)."""
    items = value.split() if isinstance(value, str) else value if isinstance(value, list) else ()
    allowed: list[str] = []
    for item in items:
        if isinstance(item, str):
            try:
                allowed += check_model_patterns([item])
            except ValueError:
                continue
    return frozenset(allowed)


def _team_from(value: Any) -> str | None:
    """A team claim: absent (or null) → no team; anything else is the team named, as text
    (a value that is no team id names a team that cannot exist: the decision refuses it)."""
    if value is None:
        return None
    return value if isinstance(value, str) else "?"


def _seconds(value: Any) -> float | None:
    """A NumericDate claim as float; None when absent or not a finite number."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def verify_with_keys(token: str, settings: JwtSettings, keys: KeySet, now: float) -> JwtResult:
    """Verify signature, `iss`, `aud`, `exp`/`nbf`/`iat` (with leeway) and map the claims."""
    import jwt  # (here: pyjwt and its cryptography are ~45 ms at the start of every command)

    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        return JwtRejected("malformed token")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in settings.algorithms:
        return JwtRejected("algorithm not allowed")
    kid = header.get("kid")
    candidates = keys.candidates(kid if isinstance(kid, str) else None, alg)
    if not candidates:
        return UNKNOWN_KEY
    claims = _decode(token, alg, candidates, settings)
    if isinstance(claims, JwtRejected):
        return claims
    expires_at = _check_times(claims, settings.leeway_seconds, now)
    if isinstance(expires_at, JwtRejected):
        return expires_at
    subject = claim(claims, settings.subject_claim)
    if not isinstance(subject, str) or not _header_safe(subject):
        return JwtRejected("missing or invalid subject")
    return JwtIdentity(
        subject=subject,
        scopes=scopes_from(claim(claims, settings.scopes_claim)),
        headers=_forwarded(claims, settings),
        expires_at=expires_at,
        models=None
        if settings.models_claim is None
        else models_from(claim(claims, settings.models_claim)),
        team=None
        if settings.team_claim is None
        else _team_from(claim(claims, settings.team_claim)),
    )


# pyjwt checks signature, iss and aud; times are checked by _check_times against our `now`
_DECODE_OPTIONS: Any = {
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "require": ["iss", "aud", "exp"],
}


def _decode(
    token: str, alg: str, candidates: list[Any], settings: JwtSettings
) -> dict[str, Any] | JwtRejected:
    """The claims, verified with the first candidate key whose signature matches."""
    import jwt

    audiences = list(settings.audiences)  # none listed: every token is refused
    for key in candidates:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                issuer=settings.issuer,
                audience=audiences,
                options=_DECODE_OPTIONS,
            )
            return claims
        except jwt.InvalidSignatureError:
            continue
        except jwt.InvalidIssuerError:
            return JwtRejected("invalid issuer")
        except jwt.InvalidAudienceError:
            return JwtRejected("invalid audience")
        except jwt.MissingRequiredClaimError as e:
            return JwtRejected(f"missing claim {e.claim}")
        except (jwt.PyJWTError, ValueError, TypeError):
            return JwtRejected("malformed token")
    return JwtRejected("invalid signature")


def _check_times(claims: Mapping[str, Any], leeway: int, now: float) -> float | JwtRejected:
    """`exp`, `nbf`, `iat` against `now` with `leeway`; the moment the token stops working."""
    exp, nbf, iat = (_seconds(claims.get(k)) for k in ("exp", "nbf", "iat"))
    if (
        exp is None
        or (nbf is None) != ("nbf" not in claims)
        or (iat is None) != ("iat" not in claims)
    ):
        return JwtRejected("malformed time claim")
    if now >= exp + leeway:
        return JwtRejected("token expired")
    if nbf is not None and now < nbf - leeway:
        return JwtRejected("token not yet valid")
    if iat is not None and iat > now + leeway:
        return JwtRejected("token issued in the future")
    return exp + leeway


def _forwarded(claims: Mapping[str, Any], settings: JwtSettings) -> tuple[tuple[str, str], ...]:
    """The `forward_claims` present and header-safe, as (header, value)."""
    headers = []
    for path, name in settings.forward_claims:
        value = claim(claims, path)
        if isinstance(value, list):
            value = ",".join(str(v) for v in value)
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            text = str(value)
            if _header_safe(text):
                headers.append((name, text))
    return tuple(headers)
