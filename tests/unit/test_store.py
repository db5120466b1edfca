"""The store: keys, records with their TTL, and Redis errors translated by meaning."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from extauthz.core.decision import RequestFacts, decide
from extauthz.core.policy import PolicySnapshot, parse_policy
from extauthz.core.token_record import TokenRecord
from extauthz.errors import MalformedRecord, StoreError, StoreRefused, StoreUnavailable
from extauthz.storage.store import Store


def test_a_record_carries_its_keys_ttl(store: Store) -> None:
    record = TokenRecord("t1", frozenset({"m"}), frozenset())
    store.client.hset(store.token_key("a" * 64), mapping=record.to_fields())
    assert store.token_record("a" * 64) == record
    assert store.token_record("a" * 64).lapses_at is None  # type: ignore[union-attr]
    store.client.pexpire(store.token_key("a" * 64), 5000)
    lapses = store.token_record("a" * 64).lapses_at  # type: ignore[union-attr]
    assert lapses is not None and time.time() + 4 < lapses <= time.time() + 5
    assert store.token_record("b" * 64) is None


class Failing:
    """A client whose every command raises `error`."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def pipeline(self, **kw: Any) -> Failing:
        return self

    def __getattr__(self, name: str) -> Any:
        def fail(*args: Any, **kw: Any) -> Any:
            raise self.error

        return fail


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (redis.ConnectionError("refused"), StoreUnavailable),
        (redis.TimeoutError("slow"), StoreUnavailable),
        (redis.exceptions.NoPermissionError("NOPERM hgetall"), StoreRefused),
        (redis.ResponseError("OOM command not allowed"), StoreError),
        (redis.ResponseError("LOADING Redis is loading the dataset"), StoreError),
        (redis.ResponseError("WRONGTYPE Operation against a key"), MalformedRecord),
    ],
)
def test_redis_errors_by_meaning(error: Exception, kind: type[Exception]) -> None:
    store = Store(Failing(error))  # type: ignore[arg-type]
    with pytest.raises(kind) as info:
        store.token_record("c" * 64)
    assert type(info.value) is kind
    with pytest.raises(StoreError):
        store.policy_version()
    # whatever it is, a decision that needs the record never allows
    snapshot = parse_policy("version: 1\nroutes:\n  m: {access: protected}\n")
    policy = PolicySnapshot(1, snapshot.routes)
    decision = decide(
        RequestFacts("m", authorization="Bearer eat_x"), policy, store.token_record, time.time()
    )
    assert decision.status == (401 if kind is MalformedRecord else 503)


def test_live_servers_come_from_the_set_and_leave_it_when_their_key_expires(store: Store) -> None:
    store.heartbeat("h:1")
    store.heartbeat("h:2")
    assert store.live_servers() == ["h:1", "h:2"]
    store.client.delete(store.servers_prefix + "h:1")  # its key expired
    assert store.live_servers() == ["h:2"]
    assert store.client.smembers(store.servers_key) == {"h:2"}
    store.heartbeat("h:1")  # back (a new key): joins the set again
    assert store.live_servers() == ["h:1", "h:2"]
    store.leave("h:1")
    store.leave("h:2")
    assert store.live_servers() == []
    assert store.client.exists(store.servers_key) == 0
