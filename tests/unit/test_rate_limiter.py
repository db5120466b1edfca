"""Rate limits: the notation, which counters an allow takes from, and the leased counting
shared by several processes through one Redis (fakeredis here; the real one in
tests/integration/test_rate_limits.py)."""

from __future__ import annotations

import random
import sys
import threading
from typing import Any

import fakeredis
import pytest
import redis

from extauthz.core.credentials import token_hash
from extauthz.core.decision import Decision, Outcome, RequestFacts, decide
from extauthz.core.limits import REQUESTS, TOKENS, Limited
from extauthz.core.policy import parse_policy
from extauthz.core.rate_limit import RateLimit, ZeroLimit, client_key
from extauthz.core.token_limit import TokenLimit
from extauthz.core.token_record import TokenRecord
from extauthz.errors import MalformedRecord
from extauthz.runtime.limiter import Limiter
from extauthz.storage.store import Store

START = 1_800_000_000.0  # an aligned minute


@pytest.mark.parametrize(
    ("text", "count", "seconds"),
    [("600/m", 600, 60), ("1/s", 1, 1), ("5/h", 5, 3600), ("100000/d", 100000, 86400)],
)
def test_notation(text: str, count: int, seconds: int) -> None:
    limit = RateLimit.parse(text)
    assert (limit.count, limit.seconds, str(limit)) == (count, seconds, text)


@pytest.mark.parametrize(
    "text",
    ["", "600", "-1/m", "+1/m", "600/w", "600/min", "1.5/s", "1e3/s", "600 / m", "٣/s", "١٠/s",
     "600/M", "9" * 13 + "/s", "1" + "0" * 5000 + "/s", "600/m\x00", "1_000/s"],
)  # fmt: skip
def test_notation_refused(text: str) -> None:
    with pytest.raises(ValueError, match="N/UNIT") as info:
        RateLimit.parse(text)
    assert "from 1 to 999999999999 (digits 0-9)" in str(info.value)


@pytest.mark.parametrize("text", ["0/m", "00/s", "0/d"])
def test_zero_is_refused_saying_what_it_would_mean(text: str) -> None:
    with pytest.raises(ZeroLimit, match="0 would refuse every request"):
        RateLimit.parse(text)


@pytest.mark.parametrize(
    ("text", "limit"),
    [(" 600/m\n", RateLimit(600, "m")), ("0600/m", RateLimit(600, "m")),
     ("999999999999/d", RateLimit(999999999999, "d"))],
)  # fmt: skip
def test_surrounding_whitespace_and_leading_zeros_are_read_as_written(
    text: str, limit: RateLimit
) -> None:
    assert RateLimit.parse(text) == limit


def test_windows_are_aligned_to_the_epoch() -> None:
    limit = RateLimit(10, "m")
    assert limit.window(START) == limit.window(START + 59.999) != limit.window(START + 60)
    assert limit.window(START + 12.5) == (START // 60, START, START + 60)


def test_a_hand_made_record_may_carry_a_limit_and_a_bad_one_is_malformed() -> None:
    record = TokenRecord.from_fields({"id": "t", "routes": "m", "rate_limit": "600/m"})
    assert record.rate_limit == RateLimit(600, "m")
    assert TokenRecord.from_fields(record.to_fields()) == record
    with pytest.raises(MalformedRecord, match="rate_limit"):
        TokenRecord.from_fields({"id": "t", "routes": "m", "rate_limit": "lots"})


POLICY = parse_policy(
    """
version: 1
routes:
  open: {access: public, rate_limit: 100/m}
  model: {access: protected, rate_limit: 50/s}
  free: {access: protected}
"""
)


def _snapshot() -> Any:
    from extauthz.core.policy import PolicySnapshot

    return PolicySnapshot(1, POLICY.routes)


def test_which_counters_an_allow_takes_from() -> None:
    records = {
        token_hash("limited"): TokenRecord(
            "t1", frozenset({"*"}), frozenset(), rate_limit=RateLimit(600, "m")
        ),
        token_hash("plain"): TokenRecord("t2", frozenset({"*"}), frozenset()),
    }

    def run(route: str, token: str | None, source: str = "203.0.113.7") -> Decision:
        auth = None if token is None else f"Bearer {token}"
        facts = RequestFacts(route, source_address=source, authorization=auth)
        return decide(facts, _snapshot(), records.get, START)

    keys = [(x.scope, str(x.limit)) for x in run("model", "limited").limits]
    assert keys == [("token:t1", "600/m"), ("route:model:tok:t1", "50/s")]
    assert [x.scope for x in run("free", "limited").limits] == ["token:t1"]
    assert [x.scope for x in run("model", "plain").limits] == ["route:model:tok:t2"]
    assert run("free", "plain").limits == ()
    assert [x.scope for x in run("open", None).limits] == ["route:open:addr:203.0.113.7"]
    v6 = run("open", None, "2001:db8::1").limits[0].scope
    assert (
        v6 == run("open", None, "2001:db8::ffff").limits[0].scope == "route:open:addr:2001:db8::/64"
    )
    assert client_key("::ffff:192.0.2.1") == "192.0.2.1"


def _allow(limit: RateLimit, key: str = "token:t1") -> Decision:
    return Decision(
        Outcome.ALLOW,
        200,
        "granted",
        subject="t1",
        limits=(Limited(REQUESTS, key, limit, "this token"),),
    )


def _store(client: Any = None) -> Store:
    return Store(client or fakeredis.FakeRedis(decode_responses=True), "extauthz:")


@pytest.mark.parametrize("count", [1, 7, 100, 1000, 20_000])
@pytest.mark.parametrize("processes", [1, 2, 4])
def test_never_more_than_n_and_at_least_90_percent_when_offered_more(
    count: int, processes: int
) -> None:
    store = _store()
    limiters = [Limiter(store) for _ in range(processes)]
    limit = RateLimit(count, "m")
    decision = _allow(limit)
    rng = random.Random(count * processes)  # noqa: S311 (a spread of requests)
    for window in range(3):
        offered = int(count * 1.5) + 20
        allowed = 0
        for i in range(offered):
            now = START + window * 60 + 59.0 * i / offered  # spread over the window
            answer = rng.choice(limiters).admit(decision, now)
            if answer.outcome is Outcome.ALLOW:
                allowed += 1
            else:
                assert answer.status == 429
                retry = int(dict(answer.headers)["retry-after"])
                assert 1 <= retry <= 60
        assert allowed <= count, (window, allowed)
        assert allowed >= 0.9 * count, (window, allowed)


@pytest.mark.parametrize("count", [1, 50, 3000])
def test_threads_taking_permits_at_once_never_exceed_n(count: int) -> None:
    # switch threads as often as the interpreter can, from several limiters on one store (processes) with 6 threads each
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        store = _store(fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True))
        # INCRBY is atomic in Redis; fakeredis can lose an increment between threads at this
        # switch interval (109 INCRBYs of 1 left 58): serialize the call as Redis does
        take, atomic = store.take_units, threading.Lock()

        def take_atomically(
            key: str, want: int, limit: int, ends: float, expire: bool = True
        ) -> tuple[int, int]:
            with atomic:
                return take(key, want, limit, ends, expire)

        store.take_units = take_atomically  # type: ignore[method-assign,assignment]
        limiters = [Limiter(store) for _ in range(2)]
        decision = _allow(RateLimit(count, "m"))
        allowed = [0] * 12
        start = threading.Barrier(12)

        def offer(i: int) -> None:
            limiter = limiters[i % 2]
            start.wait()
            for j in range(count // 4 + 20):
                now = START + 30 + j * 1e-4  # a high rate: big leases, taken at once
                if limiter.admit(decision, now).outcome is Outcome.ALLOW:
                    allowed[i] += 1

        threads = [threading.Thread(target=offer, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert sum(allowed) <= count
    assert sum(allowed) >= 0.9 * count, allowed


def test_an_unreached_limit_costs_few_redis_calls() -> None:
    calls: list[str] = []
    client = fakeredis.FakeRedis(decode_responses=True)
    store = _store(client)
    original = store.take_units

    def counted(*args: Any) -> tuple[int, int]:
        calls.append("lease")
        return original(*args)

    store.take_units = counted  # type: ignore[method-assign,assignment]
    limiter = Limiter(store)
    decision = _allow(RateLimit(1_000_000, "m"))
    requests = 20_000
    for i in range(requests):  # 10 000 requests a second
        assert limiter.admit(decision, START + i / 10_000).outcome is Outcome.ALLOW
    commands = 2 * len(calls)  # INCRBY + EXPIREAT a lease
    assert commands / requests <= 0.02, commands


def test_the_429_says_when_to_come_back() -> None:
    limiter = Limiter(_store())
    decision = _allow(RateLimit(2, "m"))
    assert limiter.admit(decision, START + 10).outcome is Outcome.ALLOW
    assert limiter.admit(decision, START + 10).outcome is Outcome.ALLOW
    denied = limiter.admit(decision, START + 10.5)
    headers = dict(denied.headers)
    assert (denied.status, denied.reason) == (429, "rate_limited")
    assert headers["retry-after"] == "50" and headers["ratelimit-policy"] == "2;w=60"
    assert '"error": "rate_limited"' in denied.body and "2/m" in denied.body
    assert dict(limiter.admit(decision, START + 59.9).headers)["retry-after"] == "1"
    assert limiter.admit(decision, START + 60).outcome is Outcome.ALLOW  # next window


class Down:
    def pipeline(self, **kw: Any) -> Down:
        return self

    def __getattr__(self, name: str) -> Any:
        def fail(*args: Any, **kw: Any) -> Any:
            raise redis.ConnectionError("down")

        return fail


def test_redis_down_fails_closed_unless_told_otherwise() -> None:
    decision = _allow(RateLimit(10, "m"))
    closed = Limiter(Store(Down(), "extauthz:"))  # type: ignore[arg-type]
    refused = closed.admit(decision, START)
    assert (refused.outcome, refused.status, refused.reason) == (
        Outcome.ERROR,
        503,
        "rate_limit_unavailable",
    )
    opened = Limiter(Store(Down(), "extauthz:"), on_error="allow")  # type: ignore[arg-type]
    assert opened.admit(decision, START) is decision


def test_both_limits_must_fit() -> None:
    limiter = Limiter(_store())
    both = Decision(
        Outcome.ALLOW,
        200,
        "granted",
        limits=(
            Limited(REQUESTS, "token:t1", RateLimit(100, "m"), "this token"),
            Limited(REQUESTS, "route:m:sub:t1", RateLimit(3, "s"), "route m"),
        ),
    )
    answers = [limiter.admit(both, START + 0.1).status for _ in range(5)]
    assert answers == [200, 200, 200, 429, 429]
    assert "route m" in limiter.admit(both, START + 0.2).body
    # all or nothing: the refusals took nothing from the token's counter (97 left)
    alone = _allow(RateLimit(100, "m"))
    assert [limiter.admit(alone, START + 0.3).status for _ in range(98)].count(200) == 97


@pytest.mark.parametrize("refused_by", ["requests", "tokens"])
def test_admission_is_all_or_nothing_across_kinds(refused_by: str) -> None:
    """A token-limit 429 gives back the request permit it took, and a rate-limit 429 the
    tokens it reserved: a refused request costs no limit anything."""
    store = _store()
    limiter = Limiter(store)
    requests = RateLimit(1 if refused_by == "requests" else 1000, "m")
    tokens = TokenLimit(100 if refused_by == "tokens" else 10**6, "m")
    llm = Decision(
        Outcome.ALLOW,
        200,
        "granted",
        limits=(
            Limited(REQUESTS, "token:t1", requests, "this token"),
            Limited(TOKENS, "token:t1", tokens, "this token"),
        ),
        reserve=60,
    )
    assert limiter.admit(llm, START + 1).status == 200
    refused = limiter.admit(llm, START + 2)
    assert refused.status == 429
    expected = "rate_limited" if refused_by == "requests" else "token_limit_reached"
    assert refused.reason == expected
    limiter.sync(START + 3, final=True)  # (every budget held goes back to Redis)
    client = store.client
    counted = {k.split(":")[1]: int(client.get(k)) for k in client.scan_iter("extauthz:?l:*")}
    assert counted == {"rl": 1, "tl": 60}, counted


def test_a_changed_limit_applies_at_once_and_keeps_the_windows_count() -> None:
    limiter = Limiter(_store())
    generous = _allow(RateLimit(1000, "m"))
    for _ in range(200):  # leases grow with the rate: permits held in this process
        assert limiter.admit(generous, START + 1).outcome is Outcome.ALLOW
    strict = _allow(RateLimit(150, "m"))  # lowered by token update: 200 already counted
    assert limiter.admit(strict, START + 2).status == 429
    raised = _allow(RateLimit(250, "m"))
    statuses = [limiter.admit(raised, START + 3).status for _ in range(60)]
    assert 30 <= statuses.count(200) <= 50  # what the window has left (leases: up to 20 held)
