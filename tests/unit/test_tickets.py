"""LLM tickets (runtime/tickets.py): signed over what the counting reads, a nonce counted
once, one key for every process even when it is made anew, and no Redis storm when Redis
is down."""

from __future__ import annotations

import time
from typing import Any

import fakeredis
import pytest

from extauthz.errors import StoreUnavailable
from extauthz.runtime.tickets import MAX_RECORD_AGE, Claims, Tickets, Verified
from extauthz.storage.client import DECODING
from extauthz.storage.store import Store

NOW = 1_800_000_000.0
LIMITS = '[600, [["tl:token:t1:m30000000", "1000/m", 1800000060]]]'


def _store() -> Store:
    return Store(fakeredis.FakeRedis(**DECODING), "extauthz:")


def test_a_ticket_verifies_for_its_fields_only_and_each_is_new() -> None:
    tickets = Tickets(_store(), wall=lambda: NOW)
    one = tickets.sign("t1", "llm", "m", LIMITS)
    two = tickets.sign("t1", "llm", "m", LIMITS)
    assert one is not None and two is not None and one != two  # (a nonce each)
    assert tickets.verified("t1", "llm", "m", LIMITS, one) == (one.split(":")[1], int(NOW))
    for fields in (
        ("t2", "llm", "m", LIMITS),
        ("t1", "llm2", "m", LIMITS),
        ("t1", "llm", "m2", LIMITS),
        ("t1", "llm", "m", LIMITS.replace("600", "60")),
    ):
        assert tickets.verified(*fields, one) is None  # fmt: skip
    other_last = "1" if one[-1] == "0" else "0"  # (a changed last digit, whatever it was)
    version, nonce, issued, mac = one.split(":")
    for forged in (
        "", "v2:", "v1:" + one[3:], one[:-1] + other_last, one.replace(":", "::", 1),
        f"{version}:{nonce}:{int(issued) + 1}:{mac}",  # another second of issue
        f"{version}:{nonce}:{issued}0:{mac}", f"{version}:{nonce}:-{issued}:{mac}",
        f"{version}:{nonce}:{issued}:{mac}:x", f"{version}:{nonce}:\u0661:{mac}",
    ):  # fmt: skip
        assert tickets.verified("t1", "llm", "m", LIMITS, forged) is None


def test_a_record_older_than_its_claims_are_kept_is_not_counted() -> None:
    clock = [NOW]
    tickets = Tickets(_store(), wall=lambda: clock[0])
    ticket = tickets.sign("t1", "llm", "m", LIMITS) or ""
    clock[0] = NOW + MAX_RECORD_AGE
    assert tickets.verified("t1", "llm", "m", LIMITS, ticket) is not None
    clock[0] += 1
    assert tickets.verified("t1", "llm", "m", LIMITS, ticket) is None
    clock[0] = NOW - 301  # (issued 301 s in the future of this host's clock)
    assert tickets.verified("t1", "llm", "m", LIMITS, ticket) is None


def test_a_nonce_is_claimed_once_in_its_hours_set() -> None:
    store = _store()
    tickets = Tickets(store)
    hour = int(NOW) // 3600
    a, b = Verified("a" * 24, int(NOW)), Verified("b" * 24, int(NOW) + 3600)
    assert tickets.claim([a, a, b]) == [True, False, True]  # (twice in one batch: once)
    assert tickets.claim([a, b]) == [False, False]
    key = f"extauthz:tickets:counted:{hour}"
    assert store.client.smembers(key) == {"a" * 24}
    assert store.client.expiretime(key) == (hour + 1) * 3600 + MAX_RECORD_AGE + 300


def test_claims_are_batched_and_a_lone_record_is_claimed_at_once() -> None:
    store = _store()
    claims = Claims(Tickets(store))
    done: list[bool] = []
    calls: list[int] = []
    real = store.claim_tickets

    def counted(hour: int, nonces: list[str], until: int | None) -> list[bool]:
        calls.append(len(nonces))
        return real(hour, nonces, until)

    store.claim_tickets = counted  # type: ignore[method-assign]
    claims.add(Verified("c" * 24, int(NOW)), done.append)
    deadline = time.monotonic() + 5
    while not done and time.monotonic() < deadline:
        time.sleep(0.01)
    assert done == [True] and calls == [1]  # (at once: no batch to wait for)
    for i in range(50):  # a burst: one batch (or two) for all of them
        claims.add(Verified(f"{i:024d}", int(NOW)), done.append)
    claims.stop()
    assert done == [True] * 51 and len(calls) <= 3 and sum(calls) == 51
    claims.add(Verified("d" * 24, int(NOW)), done.append)  # (after stop: not counted)
    assert done[-1] is False


def test_a_key_made_anew_is_read_again_by_processes_that_held_the_old_one() -> None:
    store = _store()
    clock = [100.0]
    old = Tickets(store, lambda: clock[0], wall=lambda: NOW)
    assert old.sign("t1", "llm", "m", "") is not None
    store.client.delete("extauthz:tickets:key")  # (lost: a Redis without persistence)
    new = Tickets(store, wall=lambda: NOW)
    ticket = new.sign("t1", "llm", "m", "")
    assert ticket is not None
    assert old.verified("t1", "llm", "m", "", ticket) is None  # (read a second ago: not yet)
    clock[0] += 1.5
    assert old.verified("t1", "llm", "m", "", ticket) is not None  # (it read the key again)
    assert new.verified("t1", "llm", "m", "", old.sign("t1", "llm", "m", "") or "") is not None


def test_redis_down_is_asked_once_a_second_not_on_every_allow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = _store()
    asked: list[str] = []

    def down(candidate: str) -> str:
        asked.append(candidate)
        raise StoreUnavailable("down")

    monkeypatch.setattr(store, "ticket_secret", down)
    tickets = Tickets(store)
    assert all(tickets.sign("t1", "llm", "m", "") is None for _ in range(50))
    assert len(asked) == 1


def test_a_claim_redis_cannot_make_is_not_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store()

    def down(*_: Any) -> bool:
        raise StoreUnavailable("down")

    monkeypatch.setattr(store, "claim_tickets", down)
    assert Tickets(store).claim([Verified("c" * 24, int(NOW))]) == [False]


def test_a_claim_that_raises_anything_leaves_the_thread_counting() -> None:
    store = _store()
    claims = Claims(Tickets(store))
    done: list[bool] = []
    real = store.claim_tickets
    calls = [0]

    def garbled(hour: int, nonces: list[str], until: int | None) -> list[bool]:
        calls[0] += 1
        if calls[0] == 1:
            raise ValueError("a reply Redis garbled")  # (not a StoreError)
        return real(hour, nonces, until)

    store.claim_tickets = garbled  # type: ignore[method-assign]
    claims.add(Verified("e" * 24, int(NOW)), done.append)
    assert claims.drain(5)
    assert done == [False]  # (not counted: its reservation stays)
    claims.add(Verified("f" * 24, int(NOW)), done.append)
    assert claims.drain(5)
    assert done == [False, True]
    claims.stop()
