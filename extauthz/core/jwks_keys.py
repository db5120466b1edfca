"""JWKS documents → key sets, pure: the signing keys of an issuer, by `kid`, with their
family (RSA, EC curve, OKP) and, when the JWK names one, the only algorithm they verify."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from extauthz.errors import JwksError

_KEY_FAMILY = {
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "EdDSA": ("OKP", None),
}


@dataclass(frozen=True, slots=True)
class _Key:
    key: Any  # a cryptography public key
    kty: str
    crv: str | None
    alg: str | None  # when the JWK names its algorithm, only that one may use it (RFC 7517)


@dataclass(frozen=True)
class KeySet:
    by_kid: Mapping[str, _Key]
    keyless: tuple[_Key, ...] = ()

    def candidates(self, kid: str | None, alg: str) -> list[Any]:
        """Keys that may have signed a token with this `kid` and `alg`."""
        kty, crv = _KEY_FAMILY[alg]
        if kid is not None:
            pool: Iterable[_Key] = (self.by_kid[kid],) if kid in self.by_kid else ()
        else:
            pool = (*self.by_kid.values(), *self.keyless)
        return [
            k.key
            for k in pool
            if k.kty == kty and (crv is None or k.crv == crv) and k.alg in (None, alg)
        ]


def parse_jwks(document: bytes | str) -> KeySet:
    """The signing keys of a JWKS document; unusable keys are skipped."""
    import jwt  # (here: not at the start of every command)

    try:
        data = json.loads(document)
    except ValueError as e:
        raise JwksError("JWKS is not JSON") from e
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise JwksError("JWKS has no 'keys' list")
    by_kid: dict[str, _Key] = {}
    keyless: list[_Key] = []
    for jwk in data["keys"]:
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
            continue
        if jwk.get("kty") not in ("RSA", "EC", "OKP"):
            continue
        try:
            key = jwt.PyJWK(jwk).key
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            continue
        alg = jwk.get("alg")
        if alg is not None and not isinstance(alg, str):
            continue
        entry = _Key(key, jwk["kty"], jwk.get("crv"), alg)
        kid = jwk.get("kid")
        if isinstance(kid, str):
            by_kid[kid] = entry
        else:
            keyless.append(entry)
    if not by_kid and not keyless:
        raise JwksError("JWKS has no usable signing key")
    return KeySet(by_kid, tuple(keyless))
