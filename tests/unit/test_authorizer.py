"""The authorizer's memo of decisions: reused only while nothing they depend on changed."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest

import extauthz.runtime.authorizer as authorizer_module
from extauthz.admin import tokens
from extauthz.admin.sync import sync
from extauthz.core.credentials import token_hash
from extauthz.core.decision import FOREVER, RequestFacts, decide
from extauthz.core.policy import parse_policy
from extauthz.core.rate_limit import RateLimit
from extauthz.runtime.auth_failures import FailureLimiter
from extauthz.runtime.authorizer import MEMO_TTL, Authorizer
from extauthz.runtime.limiter import Limiter
from extauthz.runtime.usage import UsageMeter
from extauthz.storage.store import Store
from extauthz.storage.token_cache import TokenCache

POLICY = "version: 1\nroutes:\n  m: {access: protected}\n  open: {access: public}\n"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()  # fakeredis applies EXPIREAT by the real clock

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def world(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> tuple[Authorizer, TokenCache, Clock, list[int]]:
    sync(store, parse_policy(POLICY))
    clock = Clock()
    cache = TokenCache(store.token_record)
    cache.set_channel_ok(True)
    auth = Authorizer(store, None, cache, clock=clock)
    auth.refresh_policy()
    calls = [0]

    def counting(*args: Any) -> Any:
        calls[0] += 1
        return decide(*args)

    monkeypatch.setattr(authorizer_module, "decide", counting)
    return auth, cache, clock, calls


def facts(token: str, route: str = "m") -> RequestFacts:
    return RequestFacts(route, authorization=f"Bearer {token}")


def test_repeated_requests_are_decided_once(world: Any, store: Store) -> None:
    auth, _, clock, calls = world
    tok = tokens.create(store, ["m"], now=clock.now).token
    for _ in range(5):
        assert auth.decide(facts(tok)).status == 200
        assert auth.decide(facts("eat_unknown")).status == 401
        assert auth.decide(RequestFacts("open")).status == 200
    assert calls[0] == 3
    clock.now += MEMO_TTL  # remembered for MEMO_TTL at most
    assert auth.decide(facts(tok)).status == 200
    assert calls[0] == 4


def test_an_invalidation_ends_reuse(world: Any, store: Store) -> None:
    auth, cache, clock, _ = world
    issued = tokens.create(store, ["m"], now=clock.now)
    assert auth.decide(facts(issued.token)).status == 200
    store.client.delete(store.token_key(token_hash(issued.token)))
    assert auth.decide(facts(issued.token)).status == 200  # nothing told us yet
    cache.invalidate(token_hash(issued.token))  # as the listener does
    assert auth.decide(facts(issued.token)).status == 401


def test_expiry_crossing_is_not_hidden(world: Any, store: Store) -> None:
    auth, _, clock, _ = world
    issued = tokens.create(store, ["m"], ttl_seconds=60, now=clock.now)
    decision = auth.decide(facts(issued.token))
    # the key's Redis expiry is read with the record (PTTL, in ms): the same moment, or a
    # little earlier (the real time Redis counted since the key was written: more under a
    # loaded suite), never later
    until = decision.reusable_until
    expires_at = float(issued.record.expires_at or 0)
    assert decision.status == 200 and until is not None and expires_at - 0.5 <= until <= expires_at
    clock.now = float(issued.record.expires_at or 0) - 0.01
    assert auth.decide(facts(issued.token)).status == 200
    clock.now += 0.02
    assert auth.decide(facts(issued.token)).status == 401


def test_a_new_policy_snapshot_ends_reuse(world: Any, store: Store) -> None:
    auth, _, clock, _ = world
    tok = tokens.create(store, ["m"], now=clock.now).token
    assert auth.decide(facts(tok)).status == 200
    sync(store, parse_policy("version: 1\nroutes:\n  m: {access: private}\n"))
    auth.refresh_policy()
    assert auth.decide(facts(tok)).status == 404


@pytest.mark.parametrize("how", ["channel down", "store down", "ttl fallback"])
def test_no_reuse_unless_invalidations_keep_the_cache_honest(
    world: Any, store: Store, how: str
) -> None:
    auth, cache, clock, calls = world
    tok = tokens.create(store, ["m"], now=clock.now).token
    assert auth.decide(facts(tok)).status == 200
    if how == "channel down":
        cache.set_channel_ok(False)
    elif how == "store down":
        cache.set_store_ok(False)
    else:
        cache.use_fallback_ttl(0.5)
    assert cache.current_epoch is None
    before = calls[0]
    store.client.delete(store.token_key(token_hash(tok)))  # unseen by the cache
    expected = 200 if how == "ttl fallback" else 401  # fallback: the cached record, ≤ 0.5 s
    assert auth.decide(facts(tok)).status == expected
    assert calls[0] == before + 1


def test_what_may_be_reused() -> None:
    from extauthz.core.decision import _not_found
    from extauthz.core.decision import unavailable as _error

    assert _error("store_unavailable").reusable_until is None
    assert _not_found("unknown_route").reusable_until == FOREVER


def test_a_remembered_allow_still_takes_a_permit(world: Any, store: Store) -> None:
    auth, _, clock, calls = world
    auth.limiter = Limiter(store)
    auth.usage = UsageMeter(store, clock=clock)
    issued = tokens.create(store, ["m"], now=clock.now, rate_limit=RateLimit(3, "m"))
    tok = issued.token
    answers = [auth.decide(facts(tok)).status for _ in range(6)]
    assert answers == [200, 200, 200, 429, 429, 429]
    assert calls[0] == 1  # decided once, remembered, and counted every time
    assert auth.decide(facts("eat_unknown")).status == 401  # not a token's use
    assert list(auth.usage._counts.values()) == [[3, 3]]  # metered: 3 allowed, 3 limited
    clock.now += 60  # the next window
    assert auth.decide(facts(tok)).status == 200


class Peer:
    """Envoy's attributes as `client_of` reads them, counting the reads."""

    def __init__(self, address: str, network: str | None = None) -> None:
        self.address = address
        self.network = network
        self.reads = 0

    @property
    def source(self) -> Any:
        self.reads += 1
        return SimpleNamespace(address=SimpleNamespace(socket_address=self))

    @property
    def context_extensions(self) -> dict[str, str]:
        return {"network": self.network} if self.network else {}


ADDRESSED = """version: 1
internal_networks: [10.0.0.0/8]
routes:
  m: {access: protected}
  open: {access: public}
  capped: {access: public, rate_limit: 2/m}
  inner: {access: private}
  inner_keys: {access: private, credentials: [bearer]}
"""


def test_the_address_is_read_only_where_the_decision_depends_on_it(
    world: Any, store: Store
) -> None:
    auth, _, clock, calls = world
    sync(store, parse_policy(ADDRESSED))
    auth.refresh_policy()
    auth.limiter = Limiter(store)
    tok = tokens.create(store, ["m", "inner_keys"], now=clock.now).token
    inside, outside, other = Peer("10.1.2.3"), Peer("192.0.2.1"), Peer("192.0.2.2")
    declared = Peer("192.0.2.3", network="internal")  # Envoy's route says: internal
    # protected and plain public routes: one decision for every client, no address read
    for peer in (inside, outside, other) * 3:
        assert auth.decide(facts(tok), peer=peer).status == 200
        assert auth.decide(RequestFacts("open"), peer=peer).status == 200
    assert calls[0] == 2 and inside.reads == outside.reads == other.reads == 0
    # private routes: each client its own answer, remembered per address, never crossed
    for _ in range(3):
        assert auth.decide(RequestFacts("inner"), peer=inside).status == 200
        assert auth.decide(RequestFacts("inner"), peer=outside).status == 404
        assert auth.decide(facts(tok, "inner_keys"), peer=inside).status == 200
        assert auth.decide(facts(tok, "inner_keys"), peer=outside).status == 404
        assert auth.decide(RequestFacts("inner"), peer=declared).status == 200
    assert calls[0] == 7 and inside.reads == outside.reads == 6
    # a per-address rate limit counts each client apart
    answers = [auth.decide(RequestFacts("capped"), peer=outside).status for _ in range(3)]
    assert answers == [200, 200, 429]
    assert auth.decide(RequestFacts("capped"), peer=other).status == 200


def test_failed_authentications_count_the_peers_address(world: Any, store: Store) -> None:
    auth, _, _, _ = world
    auth.failures = FailureLimiter(rate=0.001, burst=2)
    guesser, bystander = Peer("192.0.2.7"), Peer("192.0.2.8")
    answers = [auth.decide(facts(f"eat_guess{i}"), peer=guesser).status for i in range(4)]
    assert answers == [401, 401, 429, 429]
    assert auth.decide(facts("eat_guess9"), peer=bystander).status == 401
    assert auth.decide(facts("eat_guess0"), peer=guesser).status == 401  # remembered: no lookup
