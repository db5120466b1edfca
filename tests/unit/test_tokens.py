from __future__ import annotations

import math
import time

import pytest

from extauthz.admin import tokens
from extauthz.core.credentials import token_hash
from extauthz.core.policy import PolicySnapshot, parse_policy
from extauthz.core.token_record import TokenRecord
from extauthz.errors import InvalidValue, MalformedRecord, TokenExists, UnknownToken, UsageError
from extauthz.storage.store import Store

NOW = 1_800_000_000


def test_create_stores_only_the_hash(store: Store) -> None:
    issued = tokens.create(store, ["model"], ["inference"], ttl_seconds=3600, name="ci", now=NOW)
    key = f"extauthz:token:{token_hash(issued.token)}"
    assert store.client.keys("extauthz:token:*") == [key]
    fields = store.client.hgetall(key)
    assert issued.token not in str(store.client.dump(key)) + str(fields)
    assert fields == {
        "id": issued.record.id,
        "routes": "model",
        "scopes": "inference",
        "name": "ci",
        "created_at": str(NOW),
        "expires_at": str(NOW + 3600),
    }
    assert store.client.expiretime(key) == NOW + 3600
    assert store.token_record(token_hash(issued.token)) == issued.record
    # the index: the id's entry (expiring with the token) and its place in creation order
    entry = f"extauthz:token-id:{issued.record.id}"
    assert store.client.hgetall(entry) == {"sha256": token_hash(issued.token)}
    assert store.client.expiretime(entry) == NOW + 3600
    assert store.client.zrange("extauthz:token-ids", 0, -1) == [issued.record.id]


def test_list_show_revoke(store: Store) -> None:
    a = tokens.create(store, ["m1"], token_id="a", now=NOW)
    tokens.create(store, ["*"], ["management"], token_id="b", now=NOW)
    rows = list(tokens.listing(store))
    assert [r.id for _, r in rows if isinstance(r, TokenRecord)] == ["a", "b"]
    assert tokens.show(store, "a") == a.record
    assert tokens.revoke(store, "a").count == 1
    assert store.token_record(token_hash(a.token)) is None
    assert store.client.keys("extauthz:token-id:a") == []
    assert store.client.zrange("extauthz:token-ids", 0, -1) == ["b"]
    with pytest.raises(UnknownToken, match="no token with id 'a'"):
        tokens.revoke(store, "a")


def test_list_in_creation_order_with_route_filter_and_limit(store: Store) -> None:
    for i in range(1203):  # more than two pages
        tokens.create(store, ["r1" if i % 3 else "r2"], token_id=f"t{i:04}", now=NOW)
    tokens.create(store, ["*"], token_id="star", now=NOW)
    ids = [r.id for _, r in tokens.listing(store) if isinstance(r, TokenRecord)]
    assert ids == [f"t{i:04}" for i in range(1203)] + ["star"]
    r2 = [r.id for _, r in tokens.listing(store, route="r2") if isinstance(r, TokenRecord)]
    assert r2 == [f"t{i:04}" for i in range(0, 1203, 3)] + ["star"]
    assert [r.id for _, r in tokens.listing(store, limit=2)] == ["t0000", "t0001"]  # type: ignore[union-attr]
    assert list(tokens.listing(store, limit=0)) == []


def test_tokens_gone_behind_the_index_back_are_never_shown_and_are_cleaned(store: Store) -> None:
    a = tokens.create(store, ["m"], token_id="a", now=NOW)
    tokens.create(store, ["m"], token_id="b", now=NOW)
    store.client.delete(store.token_key(token_hash(a.token)))  # redis-cli DEL, or expiry
    assert [r.id for _, r in tokens.listing(store)] == ["b"]  # type: ignore[union-attr]
    assert store.client.zrange("extauthz:token-ids", 0, -1) == ["b"]
    assert not store.client.exists("extauthz:token-id:a")
    with pytest.raises(UnknownToken):
        tokens.show(store, "a")
    # a record whose id was edited by hand no longer answers to the old id
    b = store.client.hget("extauthz:token-id:b", "sha256")
    store.client.hset(store.token_key(b), "id", "renamed")
    with pytest.raises(UnknownToken):
        tokens.show(store, "b")


def test_rotate_keeps_record_and_kills_old_secret(store: Store) -> None:
    old = tokens.create(store, ["m"], ["inference"], ttl_seconds=60, token_id="r", now=NOW)
    new = tokens.rotate(store, "r")
    assert new.token != old.token
    assert store.token_record(token_hash(old.token)) is None
    assert store.token_record(token_hash(new.token)) == old.record
    assert store.client.expiretime(store.token_key(token_hash(new.token))) == NOW + 60
    assert tokens.show(store, "r") == old.record


def test_rotate_with_grace_keeps_the_old_secret_until_the_grace_ends(store: Store) -> None:
    now = time.time()
    old = tokens.create(store, ["m"], ttl_seconds=3600, token_id="g", now=now)
    new = tokens.rotate(store, "g", grace_seconds=600, now=now)
    old_record = store.token_record(token_hash(old.token))
    assert old_record is not None and old_record.expires_at == math.ceil(now + 600)
    assert old_record.lapses_at is not None and old_record.lapses_at <= now + 601
    assert store.token_record(token_hash(new.token)) == old.record
    assert store.client.hget("extauthz:token-id:g", "previous") == token_hash(old.token)
    # a second rotation ends the first grace at once
    newer = tokens.rotate(store, "g", grace_seconds=60, now=now)
    assert store.token_record(token_hash(old.token)) is None
    assert store.token_record(token_hash(new.token)) is not None
    # an update reaches the secret in grace too, keeping its end
    tokens.update(store, "g", scopes=["x"], now=now)
    in_grace = store.token_record(token_hash(new.token))
    assert in_grace is not None and in_grace.scopes == {"x"}
    assert in_grace.expires_at == math.ceil(now + 60)
    # revoke takes both
    assert tokens.revoke(store, "g").count == 2
    assert store.token_record(token_hash(new.token)) is None
    assert store.token_record(token_hash(newer.token)) is None


def test_grace_longer_than_the_tokens_life_is_refused(store: Store) -> None:
    tokens.create(store, ["m"], ttl_seconds=300, token_id="short", now=NOW)
    before = store.client.dump(store.client.hget("extauthz:token-id:short", "sha256"))
    with pytest.raises(InvalidValue, match=r"longer than the token's remaining life \(5m\)"):
        tokens.rotate(store, "short", grace_seconds=600, now=NOW)
    assert store.client.dump(store.client.hget("extauthz:token-id:short", "sha256")) == before


def test_update_changes_the_record_not_the_secret(store: Store) -> None:
    t = tokens.create(store, ["m"], ["inference"], name="a", token_id="u", now=NOW)
    updated = tokens.update(
        store, "u", routes=["m", "n"], scopes=["management"], name="b", ttl_seconds=60, now=NOW
    )
    assert updated.record == TokenRecord(
        "u", frozenset({"m", "n"}), frozenset({"management"}), NOW + 60, "b", NOW
    )
    assert store.token_record(token_hash(t.token)) == updated.record
    assert store.client.expiretime(store.token_key(token_hash(t.token))) == NOW + 60
    assert store.client.expiretime("extauthz:token-id:u") == NOW + 60
    forever = tokens.update(store, "u", no_expiry=True, now=NOW)
    assert forever.record.expires_at is None
    assert store.client.ttl(store.token_key(token_hash(t.token))) == -1
    assert store.client.ttl("extauthz:token-id:u") == -1
    with pytest.raises(UnknownToken):
        tokens.update(store, "nobody", name="x", now=NOW)
    with pytest.raises(InvalidValue):
        tokens.update(store, "u", name="bad\x1b[31m", now=NOW)


def test_reindex_adds_tokens_made_by_hand(store: Store) -> None:
    made = tokens.create(store, ["m"], token_id="made", now=NOW)
    store.client.hset(store.token_key("1" * 64), mapping={"id": "hand", "routes": "m"})
    store.client.pexpire(store.token_key("1" * 64), 50_000)
    store.client.hset(store.token_key("2" * 64), mapping={"id": "made", "routes": "m"})
    store.client.hset(store.token_key("3" * 64), mapping={"routes": "m"})  # no id
    store.client.zadd("extauthz:token-ids", {"ghost": 0})  # an entry without a token
    with pytest.raises(UnknownToken):
        tokens.show(store, "hand")
    result = tokens.reindex(store)
    assert (result.scanned, result.added, result.removed) == (4, 1, 1)
    assert result.conflicts == ["2" * 64 + " (id made)"]
    assert result.no_id == ["3" * 64]
    assert tokens.show(store, "hand").routes == {"m"}
    assert 0 < store.client.pttl("extauthz:token-id:hand") <= 50_000
    assert tokens.show(store, "made") == made.record
    again = tokens.reindex(store)  # idempotent
    assert (again.added, again.removed) == (0, 0)
    assert [r.id for _, r in tokens.listing(store)] == ["made", "hand"]  # type: ignore[union-attr]


def test_an_explicit_id_that_is_taken_is_refused(store: Store) -> None:
    first = tokens.create(store, ["m"], token_id="same", now=NOW)
    with pytest.raises(TokenExists):
        tokens.create(store, ["m"], token_id="same", now=NOW)
    assert tokens.show(store, "same") == first.record
    assert len(store.client.keys("extauthz:token:*")) == 1


def _policy(store: Store, text: str) -> None:
    snapshot = parse_policy(text)
    store.update_policy(lambda _: PolicySnapshot(1, snapshot.routes))


CAPPED = """
version: 1
routes:
  short: {access: protected, max_token_ttl: 1d}
  long: {access: protected, max_token_ttl: 90d}
  free: {access: protected}
"""


def test_max_token_ttl_caps_create_and_update(store: Store) -> None:
    _policy(store, CAPPED)
    assert tokens.create(store, ["long"], now=NOW).record.expires_at == NOW + 90 * 86400
    both = tokens.create(store, ["long", "short"], token_id="both", now=NOW)
    assert both.record.expires_at == NOW + 86400  # the smallest cap
    star = tokens.create(store, ["*"], now=NOW)
    assert star.record.expires_at == NOW + 86400  # every route's caps apply to '*'
    assert tokens.create(store, ["free"], now=NOW).record.expires_at is None
    with pytest.raises(InvalidValue, match="route short allows tokens of at most 1d"):
        tokens.create(store, ["short"], ttl_seconds=2 * 86400, now=NOW)
    free = tokens.create(store, ["free"], token_id="free", now=NOW)
    with pytest.raises(InvalidValue, match="route long allows tokens of at most 90d") as info:
        tokens.update(store, "free", routes=["long"], now=NOW)  # would keep "never"
    assert (info.value.field, info.value.value) == ("ttl", None)
    assert tokens.show(store, "free") == free.record  # unchanged
    with pytest.raises(InvalidValue, match="at most 1d"):
        tokens.update(store, "both", no_expiry=True, now=NOW)
    moved = tokens.update(store, "free", routes=["long"], ttl_seconds=3600, now=NOW)
    assert moved.record.expires_at == NOW + 3600


def test_routes_not_in_the_policy_are_a_warning(store: Store) -> None:
    _policy(store, CAPPED)
    issued = tokens.create(store, ["free", "later"], now=NOW)
    assert issued.warnings == (
        "route later is not in the published policy (a token for it answers 404 until it is)",
    )
    assert tokens.update(store, issued.record.id, routes=["soon"], now=NOW).warnings


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
    assert store.client.keys("*") in ([], ["extauthz:token-seq"])


def test_wrong_type_key_is_malformed(store: Store) -> None:
    store.client.set("extauthz:token:" + "1" * 64, "not a hash")
    with pytest.raises(MalformedRecord):
        store.token_record("1" * 64)
