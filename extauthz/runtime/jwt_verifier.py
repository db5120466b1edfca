"""The `verify_jwt` given to the decision: a cache of verified tokens in front of the key
cache (runtime/jwks.py) and the pure verification (core/jwt_verify.py)."""

from __future__ import annotations

from extauthz.core.bounded import BoundedDict, text_size
from extauthz.core.credentials import token_hash
from extauthz.core.jwks_keys import KeySet
from extauthz.core.jwt_verify import (
    UNKNOWN_KEY,
    JwtIdentity,
    JwtResult,
    JwtUnavailable,
    verify_with_keys,
)
from extauthz.core.policy import JwtSettings
from extauthz.runtime.jwks import KEY_WAIT, JwksCache


class JwtVerifier:
    """The `verify_jwt` given to `decide`: verified-token cache + key cache + verification."""

    def __init__(
        self,
        cache: JwksCache,
        max_entries: int = 10_000,
        first_wait: float = KEY_WAIT,
        max_bytes: int = 16 << 20,
    ):
        self.cache = cache
        self.first_wait = first_wait
        # (token hash, settings) → (identity, key set it was verified with); bounded
        self._verified: BoundedDict[tuple[str, JwtSettings], tuple[JwtIdentity, KeySet]]
        self._verified = BoundedDict(max_entries, max_bytes)

    def __call__(self, token: str, settings: JwtSettings, now: float) -> JwtResult:
        keys = self.cache.keys(settings)
        cache_key = (token_hash(token), settings)
        hit = self._verified.get(cache_key)
        if hit is not None and hit[1] is keys and now < hit[0].expires_at:
            return hit[0]
        if keys is None:
            self.cache.refetch(settings, self.first_wait)
            keys = self.cache.keys(settings)
            if keys is None:
                return JwtUnavailable("signing keys not available")
        result = verify_with_keys(token, settings, keys, now)
        if result == UNKNOWN_KEY and self.cache.refetch(settings, KEY_WAIT):
            keys = self.cache.keys(settings) or keys
            result = verify_with_keys(token, settings, keys, now)
        if isinstance(result, JwtIdentity):
            headers = [text for pair in result.headers for text in pair]
            size = text_size((cache_key[0], result.subject, *result.scopes, *headers))
            self._verified.put(cache_key, (result, keys), size)
        return result
