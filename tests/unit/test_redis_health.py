"""One view of Redis: trust is both facts; observers hear each change once, in order."""

from __future__ import annotations

from extauthz.storage.redis_health import RedisHealth
from extauthz.storage.token_cache import TokenCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_trust_needs_both_facts_and_observers_hear_changes_only() -> None:
    clock = Clock()
    health = RedisHealth(clock)
    heard: list[bool] = []
    health.observe(heard.append)
    assert not health.trusted  # nothing subscribed yet
    health.channel_subscribed(True)
    health.channel_subscribed(True)
    assert health.trusted and heard == [True]
    assert health.store_answered(False) is True
    assert health.store_answered(False) is False  # no change: not reported again
    clock.now += 7
    assert health.down_for() == 7 and heard == [True, False]
    health.channel_subscribed(False)
    assert heard == [True, False]  # still untrusted: nothing to hear
    assert health.store_answered(True) is True and health.down_for() == 0
    health.channel_subscribed(True)
    assert heard == [True, False, True]


def test_the_cache_and_the_server_read_one_state() -> None:
    health = RedisHealth()
    a = TokenCache(lambda digest: None, health=health)
    b = TokenCache(lambda digest: None, health=health)
    health.channel_subscribed(True)
    assert a.current_epoch is not None and b.current_epoch is not None
    a.set_store_ok(False)  # a failed lookup in one cache...
    assert (
        not health.store_ok and a.current_epoch is None and b.current_epoch is None
    )  # ...is seen by all
