"""The JWKS cache and the verifier in front of it: refetches, their rate limit, waiting."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest

from extauthz.core.jwt_verify import JwtIdentity, JwtRejected
from extauthz.core.policy import JwtSettings
from extauthz.runtime.jwks import KEY_WAIT, JwksCache
from extauthz.runtime.jwt_verifier import JwtVerifier
from tests.support.idp import SigningKey, claims

ISSUER = "https://idp.example.com"
SETTINGS = JwtSettings(ISSUER, audiences=("models",), jwks_uri=f"{ISSUER}/jwks")
KEY = SigningKey("k1")


class SlowIdP:
    """A JWKS endpoint whose answers take `delay` seconds; counts the fetches."""

    def __init__(self) -> None:
        self.delay = 0.0
        self.fetches = 0
        self.document = json.dumps({"keys": [KEY.jwk()]}).encode()

    def __call__(self, url: str) -> bytes:
        self.fetches += 1
        time.sleep(self.delay)
        return self.document


@pytest.fixture
def idp() -> SlowIdP:
    return SlowIdP()


@pytest.fixture
def cache(idp: SlowIdP) -> Iterator[JwksCache]:
    c = JwksCache(refresh=300, min_refetch=10, fetch=idp)
    c.track([SETTINGS])
    c.start()
    try:
        deadline = time.monotonic() + 5
        while c.keys(SETTINGS) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        yield c
    finally:
        c.stop()


def timed(verify: JwtVerifier, token: str) -> tuple[object, float]:
    started = time.monotonic()
    result = verify(token, SETTINGS, time.time())
    return result, time.monotonic() - started


def test_an_unknown_kid_flood_against_a_slow_idp_never_queues_requests(
    idp: SlowIdP, cache: JwksCache
) -> None:
    cache.min_refetch = 0  # the rate limit allows a refetch at once: the slow fetch is the cost
    idp.delay = 2.0
    verify = JwtVerifier(cache)
    good = KEY.sign(claims(ISSUER, aud="models"))
    strangers = [SigningKey(f"unknown-{i}").sign(claims(ISSUER, aud="models")) for i in range(3)]

    first, waited = timed(verify, strangers[0])  # asks for the refetch, waits its 100 ms
    assert first == JwtRejected("unknown signing key")
    assert KEY_WAIT * 0.8 <= waited < KEY_WAIT * 3
    # the fetch is still running (2 s): nobody else waits for it any more
    durations: list[float] = []

    def flood() -> None:
        for i in range(40):
            durations.append(timed(verify, strangers[1 + i % 2])[1])

    threads = [threading.Thread(target=flood) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(durations) < 0.05, sorted(durations)[-5:]
    result, took = timed(verify, good)  # legitimate tokens are never held up
    assert isinstance(result, JwtIdentity) and took < 0.05


def test_no_wait_when_the_rate_limit_allows_no_refetch(idp: SlowIdP, cache: JwksCache) -> None:
    verify = JwtVerifier(cache)
    fetched = idp.fetches
    stranger = SigningKey("unknown").sign(claims(ISSUER, aud="models"))
    for _ in range(20):  # the start-up fetch was just now: min_refetch (10 s) forbids another
        result, took = timed(verify, stranger)
        assert result == JwtRejected("unknown signing key")
        assert took < 0.02
    assert idp.fetches == fetched


def test_a_rotated_key_is_found_by_the_refetch_it_asks_for(idp: SlowIdP, cache: JwksCache) -> None:
    cache.min_refetch = 0
    rotated = SigningKey("k2")
    idp.document = json.dumps({"keys": [KEY.jwk(), rotated.jwk()]}).encode()
    result, took = timed(JwtVerifier(cache), rotated.sign(claims(ISSUER, aud="models")))
    assert isinstance(result, JwtIdentity)
    assert took < KEY_WAIT * 3
