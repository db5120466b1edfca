"""Usage metering: counted in memory, written per UTC day in batches, never into a token's
key, kept when Redis refuses a flush."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from extauthz.admin import tokens
from extauthz.core.credentials import token_hash
from extauthz.errors import UnknownToken
from extauthz.runtime.usage import MAX_PENDING, UsageMeter
from extauthz.storage.store import Store

DAY = 86400
TODAY = int(time.time() // DAY) - 1  # yesterday: real dates (Redis expires the day hashes)
NOW = TODAY * DAY + 3600.0


def date(day: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(day * DAY))


def key(day: int) -> str:
    return f"extauthz:usage:{date(day)}"


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def test_counts_per_token_and_day_with_last_use(store: Store) -> None:
    clock = Clock()
    meter = UsageMeter(store, flush_every=10, retention_days=90, clock=clock)
    for _ in range(3):
        meter.count("t1", True, NOW)
    meter.count("t1", False, NOW + 1)
    meter.count("t2", True, NOW + 2)
    meter.count("t1", True, NOW + DAY)  # the next UTC day
    assert store.client.keys("*") == []  # nothing written before the flush
    clock.now += 9
    meter.maybe_flush()
    assert store.client.keys("*") == []
    clock.now += 1
    meter.maybe_flush()
    assert store.client.hgetall(key(TODAY)) == {
        "a:t1": "3",
        "r:t1": "1",
        "a:t2": "1",
    }
    assert store.client.hgetall(key(TODAY + 1)) == {"a:t1": "1"}
    assert store.client.expiretime(key(TODAY)) == (TODAY + 1 + 90) * DAY
    assert store.last_used(["t1", "t2", "t3"]) == [int(NOW + DAY), int(NOW + 2), None]
    # counts add up across flushes (and processes); last use never goes back in time
    meter.count("t1", True, NOW + 5)
    meter.flush()
    assert store.client.hget(key(TODAY), "a:t1") == "4"
    assert store.last_used(["t1"]) == [int(NOW + DAY)]


class Refusing:
    def __init__(self, inner: Any) -> None:
        self.inner, self.down = inner, True

    def pipeline(self, **kw: Any) -> Any:
        if self.down:
            raise redis.ConnectionError("down")
        return self.inner.pipeline(**kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_refused_flush_keeps_the_counts(store: Store) -> None:
    flaky = Refusing(store.client)
    meter = UsageMeter(Store(flaky, "extauthz:"))  # type: ignore[arg-type]
    meter.count("t1", True, NOW)
    assert meter.flush() is False
    meter.count("t1", True, NOW)
    flaky.down = False
    assert meter.flush() is True
    assert store.client.hget(key(TODAY), "a:t1") == "2"


def test_pending_counts_are_bounded(store: Store) -> None:
    meter = UsageMeter(store)
    for i in range(MAX_PENDING + 5):
        meter.count(f"t{i}", True, NOW)
    assert meter.dropped == 5


def test_token_usage_report(store: Store) -> None:
    issued = tokens.create(store, ["m"], token_id="u1", now=NOW)
    own_key = store.token_key(token_hash(issued.token))
    before = store.client.dump(own_key)
    meter = UsageMeter(store)
    meter.count("u1", True, NOW - DAY)
    meter.count("u1", False, NOW)
    meter.flush()
    assert store.client.dump(own_key) == before  # never written into the token's key
    report = tokens.usage(store, "u1", 3, NOW)
    assert report == {
        "id": "u1",
        "last_used": int(NOW),
        "days": [
            {"date": date(TODAY - 2), "allowed": 0, "rate_limited": 0},
            {"date": date(TODAY - 1), "allowed": 1, "rate_limited": 0},
            {"date": date(TODAY), "allowed": 0, "rate_limited": 1},
        ],
    }
    assert tokens.show(store, "u1").last_used == int(NOW)
    assert [r.last_used for _, r in tokens.listing(store)] == [int(NOW)]  # type: ignore[union-attr]
    tokens.revoke(store, "u1")
    assert tokens.usage(store, "u1", 1, NOW)["last_used"] == int(NOW)  # history outlives it
    with pytest.raises(UnknownToken):
        tokens.usage(store, "never-was", 7, NOW)
