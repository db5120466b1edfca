"""Failed authentications per client address: buckets, keys, and the authorizer's use of them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from extauthz.admin import tokens
from extauthz.admin.sync import sync
from extauthz.core.decision import RequestFacts
from extauthz.core.policy import parse_policy
from extauthz.core.rate_limit import client_key
from extauthz.runtime.auth_failures import FailureLimiter
from extauthz.runtime.authorizer import Authorizer
from extauthz.storage.store import Store
from extauthz.storage.token_cache import TokenCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("203.0.113.9", "203.0.113.9"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
        ("::ffff:203.0.113.9", "203.0.113.9"),
        ("", ""),
        ("not an address", "not an address"),
        ("fe80::1%eth0", "fe80::/64"),
    ],
)
def test_client_keys(address: str, key: str) -> None:
    assert client_key(address) == key


def test_a_bucket_empties_then_refills_at_the_rate() -> None:
    clock = Clock()
    limiter = FailureLimiter(rate=2.0, burst=5, clock=clock)
    for _ in range(4):
        limiter.failed("a")
        assert limiter.retry_after("a") is None
    limiter.failed("a")
    assert limiter.retry_after("a") == pytest.approx(0.5)
    assert limiter.retry_after("b") is None  # other addresses are not affected
    for _ in range(100):  # failures while blocked build no debt
        limiter.failed("a")
    clock.now += 0.5
    assert limiter.retry_after("a") is None
    limiter.failed("a")
    assert limiter.retry_after("a") == pytest.approx(0.5)


def test_the_table_is_bounded() -> None:
    limiter = FailureLimiter(rate=1.0, burst=1, clock=Clock(), max_addresses=100)
    for i in range(10_000):
        limiter.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter._buckets) == 100


POLICY = "version: 1\nroutes:\n  m: {access: protected}\n"


@pytest.fixture
def world(store: Store) -> tuple[Authorizer, Clock, list[int]]:
    sync(store, parse_policy(POLICY))
    clock = Clock()
    reads = [0]
    fetch = store.token_record

    def counting(digest: str) -> Any:
        reads[0] += 1
        return fetch(digest)

    cache = TokenCache(counting)
    cache.set_channel_ok(True)
    auth = Authorizer(store, None, cache, failures=FailureLimiter(1.0, 10, clock=clock))
    auth.refresh_policy()
    return auth, clock, reads


def ask(auth: Authorizer, token: str, source: str = "198.51.100.7") -> Any:
    return auth.decide(RequestFacts("m", source_address=source, authorization=f"Bearer {token}"))


def test_random_tokens_from_one_address_stop_reaching_redis(world: Any, store: Store) -> None:
    auth, clock, reads = world
    cached = tokens.create(store, ["m"]).token
    fresh = tokens.create(store, ["m"]).token
    assert ask(auth, cached).status == 200  # in the cache from now on
    reads[0] = 0
    statuses = [ask(auth, f"eat_random-{i}").status for i in range(1000)]
    assert statuses[:10] == [401] * 10 and set(statuses[10:]) == {429}
    assert reads[0] == 10  # the burst: then no more Redis reads for this address
    denied = ask(auth, "eat_random-x")
    assert dict(denied.headers)["retry-after"] == "1"
    assert json.loads(denied.body)["error"] == "rate_limited"
    assert ask(auth, cached).status == 200  # a cached credential still answers
    assert ask(auth, fresh).status == 429  # an uncached one waits like the rest
    assert ask(auth, fresh, source="198.51.100.8").status == 200  # other clients are fine
    clock.now += 1.0
    assert ask(auth, fresh).status == 200
    assert ask(auth, "eat_random-again").status == 401  # one more try per second


def test_missing_credentials_are_not_failures(world: Any) -> None:
    auth, _, _ = world
    for _ in range(100):
        assert auth.decide(RequestFacts("m", source_address="198.51.100.7")).status == 401
    assert ask(auth, "eat_random").status == 401
