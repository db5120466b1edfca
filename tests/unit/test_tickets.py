"""LLM tickets (runtime/tickets.py): signed over what the counting reads, a nonce counted
once, one key for every process even when it is made anew, and no Redis storm when Redis
is down."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest

from extauthz.errors import StoreUnavailable
from extauthz.runtime.tickets import Tickets
from extauthz.storage.client import DECODING
from extauthz.storage.store import Store

NOW = 1_800_000_000.0
LIMITS = '[600, [["tl:token:t1:m30000000", "1000/m", 1800000060]]]'


def _store() -> Store:
    return Store(fakeredis.FakeRedis(**DECODING), "extauthz:")


def test_a_ticket_verifies_for_its_fields_only_and_each_is_new() -> None:
    tickets = Tickets(_store())
    one = tickets.sign("t1", "llm", "m", LIMITS)
    two = tickets.sign("t1", "llm", "m", LIMITS)
    assert one is not None and two is not None and one != two  # (a nonce each)
    assert tickets.verified("t1", "llm", "m", LIMITS, one) == one.split(":")[1]
    for fields in (
        ("t2", "llm", "m", LIMITS),
        ("t1", "llm2", "m", LIMITS),
        ("t1", "llm", "m2", LIMITS),
        ("t1", "llm", "m", LIMITS.replace("600", "60")),
    ):
        assert tickets.verified(*fields, one) is None  # fmt: skip
    other_last = "1" if one[-1] == "0" else "0"  # (a changed last digit, whatever it was)
    for forged in ("", "v1:", "v2:" + one[3:], one[:-1] + other_last, one.replace(":", "::", 1)):
        assert tickets.verified("t1", "llm", "m", LIMITS, forged) is None


def test_a_nonce_is_claimed_once_until_its_window_ends() -> None:
    store = _store()
    tickets = Tickets(store)
    assert tickets.claim("a" * 24, LIMITS, NOW) is True
    assert tickets.claim("a" * 24, LIMITS, NOW) is False
    assert store.client.expiretime("extauthz:tickets:counted:" + "a" * 24) == 1800000060 + 60
    assert tickets.claim("b" * 24, "", NOW) is True  # (no reservation: an hour)
    assert store.client.expiretime("extauthz:tickets:counted:" + "b" * 24) == int(NOW) + 3600 + 60


def test_a_key_made_anew_is_read_again_by_processes_that_held_the_old_one() -> None:
    store = _store()
    clock = [100.0]
    old = Tickets(store, lambda: clock[0])
    assert old.sign("t1", "llm", "m", "") is not None
    store.client.delete("extauthz:tickets:key")  # (lost: a Redis without persistence)
    new = Tickets(store)
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

    monkeypatch.setattr(store, "claim_ticket", down)
    assert Tickets(store).claim("c" * 24, LIMITS, NOW) is False
