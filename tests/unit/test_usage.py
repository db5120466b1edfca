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
from tests.support.policies import publish_routes

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
    publish_routes(store, "m")
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


def test_a_partly_failed_flush_never_counts_twice(store: Store) -> None:
    """With `usage:last-used` of the wrong type every flush used to re-add the whole batch
    (4, 7, 10 ...). The counts are written once; last-used is retried alone."""
    store.client.set("extauthz:usage:last-used", "x")
    meter = UsageMeter(store)
    for _ in range(4):
        meter.count("t1", True, NOW)
    assert meter.flush() is False  # last-used refused: kept for the next flush
    for _ in range(3):
        assert meter.flush() is False
    assert store.client.hget(key(TODAY), "a:t1") == "4"
    store.client.delete("extauthz:usage:last-used")
    assert meter.flush() is True
    assert store.client.hget(key(TODAY), "a:t1") == "4"
    assert store.last_used(["t1"]) == [int(NOW)]


def test_a_day_hash_of_another_type_is_refused_not_retried_forever(store: Store) -> None:
    store.client.set(key(TODAY), "x")
    meter = UsageMeter(store)
    meter.count("t1", True, NOW)
    meter.count("t2", False, NOW - DAY)
    assert meter.flush() is True  # written what could be, the rest refused and counted
    assert meter.refused >= 1
    assert store.client.hget(key(TODAY - 1), "r:t2") == "1"
    assert meter.flush() is True and store.client.hget(key(TODAY - 1), "r:t2") == "1"


class LosesReplies:
    """A client whose next `lose` transactions are executed by Redis, but whose replies
    never arrive (a time-out after the write)."""

    def __init__(self, inner: Any, lose: int) -> None:
        self.inner, self.lose = inner, lose

    def pipeline(self, **kw: Any) -> Any:
        pipe = self.inner.pipeline(**kw)
        if not kw.get("transaction"):
            return pipe
        execute = pipe.execute

        def lost(**args: Any) -> Any:
            result = execute(**args)
            if self.lose > 0:
                self.lose -= 1
                raise redis.TimeoutError("Timeout reading from socket")
            return result

        pipe.execute = lost
        return pipe

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_batch_whose_reply_was_lost_is_not_added_again(store: Store) -> None:
    """A flush of 2,500 pairs in batches of 1,000; the second batch's reply is lost after Redis
    wrote it. The next flush adds the rest, never a pair twice."""
    client = LosesReplies(store.client, 0)
    meter = UsageMeter(Store(client, "extauthz:"))  # type: ignore[arg-type]
    for i in range(2_500):
        meter.count(f"t{i}", True, NOW)
    meter.count("t0", True, NOW)

    class SecondLost:
        calls = 0

    original = client.pipeline

    def pipeline(**kw: Any) -> Any:
        if kw.get("transaction"):
            SecondLost.calls += 1
            client.lose = 1 if SecondLost.calls == 2 else 0
        return original(**kw)

    client.pipeline = pipeline  # type: ignore[method-assign]
    assert meter.flush() is False
    assert store.client.hlen(key(TODAY)) == 2_000  # two batches written, the 2nd not known
    meter.count("t0", True, NOW)
    assert meter.flush() is True
    counts = store.client.hgetall(key(TODAY))
    assert len(counts) == 2_500
    assert counts["a:t0"] == "3" and {v for k, v in counts.items() if k != "a:t0"} == {"1"}
    assert meter.flush() is True and store.client.hgetall(key(TODAY)) == counts
