from __future__ import annotations

import pytest

from extauthz.admin import tokens
from extauthz.core.credentials import token_hash
from extauthz.core.token_record import TokenRecord
from extauthz.errors import InvalidValue, MalformedRecord, UsageError
from extauthz.storage.store import Store

NOW = 1_800_000_000


def test_create_stores_only_the_hash(store: Store) -> None:
    issued = tokens.create(store, ["model"], ["inference"], ttl_seconds=3600, name="ci", now=NOW)
    keys = store.client.keys("*")
    assert keys == [f"extauthz:token:{token_hash(issued.token)}"]
    fields = store.client.hgetall(keys[0])
    assert issued.token not in str(fields)
    assert fields == {
        "id": issued.record.id,
        "routes": "model",
        "scopes": "inference",
        "name": "ci",
        "created_at": str(NOW),
        "expires_at": str(NOW + 3600),
    }
    assert store.client.expiretime(keys[0]) == NOW + 3600
    assert store.token_record(token_hash(issued.token)) == issued.record


def test_list_show_revoke(store: Store) -> None:
    a = tokens.create(store, ["m1"], token_id="a", now=NOW)
    tokens.create(store, ["*"], ["management"], token_id="b", now=NOW)
    store.client.hset("extauthz:token:" + "0" * 64, mapping={"routes": "x"})  # no id
    rows = tokens.list_tokens(store)
    assert sorted(r.id for _, r in rows if isinstance(r, TokenRecord)) == ["a", "b"]
    assert sum(isinstance(r, MalformedRecord) for _, r in rows) == 1
    assert tokens.show(store, "a") == a.record
    assert tokens.revoke(store, "a").count == 1
    assert store.token_record(token_hash(a.token)) is None
    with pytest.raises(UsageError, match="no token with id 'a'"):
        tokens.revoke(store, "a")


def test_rotate_keeps_record_and_kills_old_secret(store: Store) -> None:
    old = tokens.create(store, ["m"], ["inference"], ttl_seconds=60, token_id="r", now=NOW)
    new = tokens.rotate(store, "r")
    assert new.token != old.token
    assert store.token_record(token_hash(old.token)) is None
    assert store.token_record(token_hash(new.token)) == old.record
    assert store.client.expiretime(store.token_key(token_hash(new.token))) == NOW + 60


def test_rotate_refuses_ambiguous_id(store: Store) -> None:
    tokens.create(store, ["m"], token_id="dup", now=NOW)
    tokens.create(store, ["m"], token_id="dup", now=NOW)
    with pytest.raises(UsageError, match="2 tokens have id 'dup'"):
        tokens.rotate(store, "dup")
    assert tokens.revoke(store, "dup").count == 2


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("15m", 900), ("1h", 3600), ("7d", 604800)]
)
def test_parse_ttl(text: str, seconds: int) -> None:
    assert tokens.parse_ttl(text) == seconds


@pytest.mark.parametrize("text", ["", "1", "0h", "-1h", "1w", "1.5h", "h"])
def test_parse_ttl_rejects(text: str) -> None:
    with pytest.raises(InvalidValue) as info:  # the CLI words it as `invalid --ttl ...`
        tokens.parse_ttl(text)
    assert (info.value.field, info.value.value) == ("ttl", text)


@pytest.mark.parametrize(
    ("routes", "scopes", "token_id"),
    [([], [], None), (["a b"], [], None), (["a"], ["x,y"], None), (["a"], [], "bad id")],
)
def test_create_rejects_bad_input(
    store: Store, routes: list[str], scopes: list[str], token_id: str | None
) -> None:
    with pytest.raises(UsageError):
        tokens.create(store, routes, scopes, token_id=token_id)
    assert store.client.keys("*") == []


def test_wrong_type_key_is_malformed(store: Store) -> None:
    store.client.set("extauthz:token:" + "1" * 64, "not a hash")
    with pytest.raises(MalformedRecord):
        store.token_record("1" * 64)
