from __future__ import annotations

import logging
import threading
import time

import pytest
import redis

from extauthz.core.token_record import TokenRecord
from extauthz.errors import StoreUnavailable
from extauthz.storage.invalidation import InvalidationListener, missing_flags
from extauthz.storage.store import Store
from extauthz.storage.token_cache import TokenCache

REC = TokenRecord("t1", frozenset({"m"}), frozenset())


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Backend:
    def __init__(self) -> None:
        self.data: dict[str, TokenRecord] = {"h1": REC}
        self.calls = 0
        self.down = False
        self.during_fetch: object = None

    def __call__(self, digest: str) -> TokenRecord | None:
        self.calls += 1
        if self.down:
            raise StoreUnavailable("down")
        if callable(self.during_fetch):
            self.during_fetch()
        return self.data.get(digest)


def make(**kw: float) -> tuple[TokenCache, Backend, Clock]:
    backend, clock = Backend(), Clock()
    cache = TokenCache(backend, clock=clock, **kw)  # type: ignore[arg-type]
    cache.set_channel_ok(True)
    return cache, backend, clock


def test_hits_and_negative_hits_skip_redis() -> None:
    cache, backend, clock = make(ttl=60, negative_ttl=5)
    assert [cache("h1") for _ in range(10)] == [REC] * 10
    assert [cache("nope") for _ in range(10)] == [None] * 10
    assert backend.calls == 2
    clock.now += 5
    assert cache("nope") is None and backend.calls == 3  # negative entry expired
    clock.now += 56
    assert cache("h1") == REC and backend.calls == 4  # positive entry expired (and refetched)


def test_invalidation_and_race() -> None:
    cache, backend, _ = make()
    assert cache("h1") == REC
    del backend.data["h1"]
    assert cache("h1") == REC  # still cached
    cache.invalidate("h1")
    assert cache("h1") is None
    backend.data["h1"] = REC
    cache.invalidate("h1")  # hset by hand: the negative entry goes too
    # a change that lands while a fetch is in flight: the fetched value is not cached
    backend.during_fetch = lambda: cache.invalidate("h1")
    assert cache("h1") == REC
    backend.during_fetch = None
    calls = backend.calls
    assert cache("h1") == REC and backend.calls == calls + 1


def test_untrusted_cache_is_bypassed_and_restarts_empty() -> None:
    cache, backend, _clock = make()
    cache("h1")
    cache.set_channel_ok(False)
    backend.down = True
    with pytest.raises(StoreUnavailable):
        cache("h1")  # no cached allow while nothing tells us about revocations
    backend.down = False
    cache.set_channel_ok(True)
    assert len(cache) == 1  # the failed fetch also marked the store down: still bypassed
    cache.set_store_ok(True)  # the policy watcher's next successful poll
    assert len(cache) == 0
    cache("h1")
    backend.down = True
    with pytest.raises(StoreUnavailable):
        cache("other")  # a failed fetch marks the store down...
    with pytest.raises(StoreUnavailable):
        cache("h1")  # ...so the cached record is not used either


def test_stale_grace_bounds_cached_allows_during_an_outage() -> None:
    cache, backend, clock = make(stale_grace=2)
    cache("h1")
    cache.set_store_ok(False)
    backend.down = True
    clock.now += 1.9
    assert cache("h1") == REC
    clock.now += 0.2
    with pytest.raises(StoreUnavailable):
        cache("h1")


def test_single_flight() -> None:
    gate = threading.Event()
    calls = 0

    def slow(digest: str) -> TokenRecord | None:
        nonlocal calls
        calls += 1
        gate.wait(2)
        return REC

    cache = TokenCache(slow)
    cache.set_channel_ok(True)
    results: list[TokenRecord | None] = []
    threads = [threading.Thread(target=lambda: results.append(cache("h1"))) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.1)
    gate.set()
    for t in threads:
        t.join()
    assert results == [REC] * 8 and calls == 1


def test_bounded() -> None:
    cache, _backend, _ = make(max_negative=3)
    for i in range(10):
        cache(f"x{i}")
    assert len(cache) == 3 and cache.stats.evictions == 7


def test_bounded_by_bytes_whatever_the_entry_count() -> None:
    # records at their largest (ids, names and lists at the limits of a valid record)
    cache, backend, _ = make(max_bytes=1 << 20)
    for i in range(2000):
        backend.data[f"h{i}"] = TokenRecord(
            f"{i:0>128}",
            frozenset(f"route-{j:0>100}" for j in range(40)),
            frozenset(f"scope-{j:0>100}" for j in range(40)),
            name="n" * 256,
        )
        assert cache(f"h{i}") is backend.data[f"h{i}"]
    records = cache._records
    assert records.bytes <= 1 << 20 and 0 < len(records) < 200
    assert cache.stats.evictions == 2000 - len(records)


@pytest.mark.parametrize(
    ("current", "missing"), [("", "Kghxe"), ("KEA", ""), ("Kgx", "he"), ("Eg", "Khxe")]
)
def test_missing_notification_flags(current: str, missing: str) -> None:
    assert missing_flags(current) == missing


def test_a_lookup_after_an_invalidation_never_joins_an_older_fetch() -> None:
    # The leader's Redis read happened before the token was revoked; a caller told that the
    # revocation is done must not be handed that read's answer.
    data = {"h1": REC}
    reading, release = threading.Event(), threading.Event()
    calls = [0]

    def fetch(digest: str) -> TokenRecord | None:
        calls[0] += 1
        value = data.get(digest)  # read first...
        if calls[0] == 1:
            reading.set()
            release.wait(5)  # ...answer late
        return value

    cache = TokenCache(fetch)
    cache.set_channel_ok(True)
    results: dict[str, object] = {}
    leader = threading.Thread(target=lambda: results.setdefault("leader", cache("h1")))
    leader.start()
    assert reading.wait(5)
    del data["h1"]  # revoked in Redis...
    cache.invalidate("h1")  # ...and the invalidation handled: the revoke has returned
    results["after"] = cache("h1")  # must read Redis again, not wait for the leader
    release.set()
    leader.join()
    assert results == {"leader": REC, "after": None}
    assert calls[0] == 2
    assert cache("h1") is None  # the leader's stale answer was not cached either


@pytest.mark.parametrize(
    ("error", "said", "not_said"),
    [
        (redis.TimeoutError("Timeout reading from socket"), "did not answer in time", "ACL"),
        (redis.exceptions.NoPermissionError("no permissions"), "ACL user needs", "in time"),
    ],
)
def test_a_failed_registration_names_its_cause(
    store: Store, caplog: pytest.LogCaptureFixture, error: Exception, said: str, not_said: str
) -> None:
    """A Redis timeout at registration is a timeout, not missing ACL rights."""

    def fails(*args: object, **kw: object) -> None:
        raise error

    store.client.set = fails
    listener = InvalidationListener(
        "redis://127.0.0.1:1/0", store, TokenCache(lambda _: None), print
    )
    with caplog.at_level(logging.WARNING, "extauthz"):
        listener._heartbeat()
        listener._heartbeat()  # said once, not every beat
    (line,) = [r.getMessage() for r in caplog.records if "cannot register" in r.getMessage()]
    assert said in line and not_said not in line
    assert "`token revoke` will not wait for this server" in line
