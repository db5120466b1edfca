from __future__ import annotations

import math
import time

import pytest

from extauthz.admin import tokens
from extauthz.core.credentials import token_hash
from extauthz.core.policy import PolicySnapshot, parse_policy
from extauthz.core.token_limit import TokenLimit
from extauthz.core.token_record import TokenRecord
from extauthz.errors import (
    InvalidValue,
    MalformedRecord,
    TokenExists,
    UnknownRoute,
    UnknownToken,
    UsageError,
)
from extauthz.storage.store import Store
from tests.support.policies import publish_routes

NOW = 1_800_000_000


def test_create_stores_only_the_hash(store: Store) -> None:
    publish_routes(store, "model")
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
    publish_routes(store, "m1")
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
    publish_routes(store, "r1", "r2")
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
    publish_routes(store, "m")
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
    publish_routes(store, "m")
    old = tokens.create(store, ["m"], ["inference"], ttl_seconds=60, token_id="r", now=NOW)
    new = tokens.rotate(store, "r")
    assert new.token != old.token
    assert store.token_record(token_hash(old.token)) is None
    assert store.token_record(token_hash(new.token)) == old.record
    assert store.client.expiretime(store.token_key(token_hash(new.token))) == NOW + 60
    assert tokens.show(store, "r") == old.record


def test_rotate_with_grace_keeps_the_old_secret_until_the_grace_ends(store: Store) -> None:
    publish_routes(store, "m")
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
    publish_routes(store, "m")
    tokens.create(store, ["m"], ttl_seconds=300, token_id="short", now=NOW)
    before = store.client.dump(store.client.hget("extauthz:token-id:short", "sha256"))
    with pytest.raises(InvalidValue, match=r"longer than the token's remaining life \(5m\)"):
        tokens.rotate(store, "short", grace_seconds=600, now=NOW)
    assert store.client.dump(store.client.hget("extauthz:token-id:short", "sha256")) == before


def test_update_changes_the_record_not_the_secret(store: Store) -> None:
    publish_routes(store, "m", "n")
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
    publish_routes(store, "m")
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
    publish_routes(store, "m")
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


def test_a_route_the_policy_does_not_have_is_refused_unless_allowed(store: Store) -> None:
    _policy(store, CAPPED)
    with pytest.raises(UnknownRoute) as info:
        tokens.create(store, ["free", "lnog"], now=NOW)  # a typo
    assert (info.value.field, info.value.value) == ("route", "lnog")
    assert (
        info.value.why == "lnog is not a route of the synced policy (version 1; did you mean long?)"
    )
    assert info.value.fix == "fix the name"
    assert "lnog" in info.value.rule and '"allow_unknown_route": true' in info.value.rule  # API
    assert store.client.keys("extauthz:token*") == []  # nothing written
    issued = tokens.create(store, ["free", "later"], now=NOW, allow_unknown_route=True)
    assert issued.warnings == (
        "route later is not in the synced policy (a token for it answers 404 until it is)",
    )
    token_id = issued.record.id
    with pytest.raises(UnknownRoute, match="soon is not a route of the synced policy"):
        tokens.update(store, token_id, routes=["soon"], now=NOW)
    assert tokens.show(store, token_id).routes == {"free", "later"}
    moved = tokens.update(store, token_id, routes=["soon"], now=NOW, allow_unknown_route=True)
    assert moved.warnings and "route soon" in moved.warnings[0]
    # a change that leaves the routes alone is not refused for them
    assert tokens.update(store, token_id, name="renamed", now=NOW).warnings == ()


def test_with_no_policy_synced_named_routes_are_refused_and_star_is_not(store: Store) -> None:
    with pytest.raises(UnknownRoute) as info:
        tokens.create(store, ["m"], now=NOW)
    assert info.value.why == "m is not a known route: no policy has been synced yet"
    assert info.value.fix == "run `extauthz sync POLICY.yaml` first"
    assert store.client.keys("extauthz:token*") == []
    first_admin = tokens.create(store, ["*"], ["admin"], now=NOW)  # names no route
    assert first_admin.warnings == ()
    later = tokens.create(store, ["m"], now=NOW, allow_unknown_route=True)
    assert later.warnings == (
        "route m is not checked: no policy has been synced yet (a token for it answers 404 "
        "until a policy has it)",
    )


LLM_POLICY = """
version: 1
routes:
  web: {access: protected}
  llm: {access: protected, api: openai}
"""


def test_llm_fields_need_an_llm_route(store: Store) -> None:
    _policy(store, LLM_POLICY)
    limit = TokenLimit(1000, "d")
    with pytest.raises(InvalidValue) as info:
        tokens.create(store, ["web"], now=NOW, token_limit=limit)
    assert (info.value.field, info.value.value) == ("token-limit", "1000/d")
    assert "none of its routes (web) is one" in info.value.rule
    with pytest.raises(InvalidValue) as info:
        tokens.create(store, ["web"], now=NOW, models=["gpt-4o", "demo*"])
    assert (info.value.field, info.value.value) == ("model", "demo*,gpt-4o")
    assert store.client.keys("extauthz:token*") == []
    assert tokens.create(store, ["web", "llm"], now=NOW, token_limit=limit).warnings == ()
    assert tokens.create(store, ["*"], now=NOW, models=["m"]).warnings == ()  # llm among them
    # an unknown route allowed may become an LLM route: accepted, with a warning
    later = tokens.create(store, ["later"], now=NOW, token_limit=limit, allow_unknown_route=True)
    assert "they do once later is one" in later.warnings[-1]
    # updates: new LLM fields, or new routes for the fields a token keeps
    tokens.create(store, ["llm"], token_id="both", now=NOW, token_limit=limit)
    with pytest.raises(InvalidValue) as info:
        tokens.update(store, "both", routes=["web"], now=NOW)
    assert (info.value.field, info.value.value) == ("route", "web")
    assert tokens.show(store, "both").routes == {"llm"}
    moved = tokens.update(store, "both", routes=["web"], token_limit=None, now=NOW)
    assert (moved.record.routes, moved.record.token_limit) == (frozenset({"web"}), None)
    with pytest.raises(InvalidValue, match="none of its routes"):
        tokens.update(store, "both", token_limit=limit, now=NOW)
    with pytest.raises(InvalidValue, match="none of its routes"):
        tokens.update(store, "both", models=["m"], now=NOW)
    assert tokens.update(store, "both", models=None, token_limit=None, now=NOW).warnings == ()


def test_star_with_llm_fields_needs_an_llm_route_in_the_policy(store: Store) -> None:
    _policy(store, CAPPED)  # no LLM route
    with pytest.raises(InvalidValue, match=r"none of its routes \(every route of the synced"):
        tokens.create(store, ["*"], now=NOW, token_limit=TokenLimit(5, "m"))
    star = tokens.create(
        store, ["*"], now=NOW, token_limit=TokenLimit(5, "m"), allow_unknown_route=True
    )
    assert "they do once * is one" in star.warnings[0]


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


@pytest.mark.parametrize(
    ("scopes", "models"),
    [
        ([f"s{i:03}" + "x" * 124 for i in range(31)], None),  # 31 x 129 - 1 = 3998 characters
        ([], ["m" * 128, "n" * 128]),
        (["a" * 128], [f"model-{i:04}" for i in range(400)]),  # 400 x 11 - 1 = 4399: refused
        ([f"s{i:03}" + "x" * 124 for i in range(32)], None),  # 32 x 129 - 1 = 4127: refused
        ([], ["m" * 129]),  # refused
    ],
)
def test_every_token_made_can_be_read_back(
    store: Store, scopes: list[str], models: list[str] | None
) -> None:
    """What create accepts is what a record can hold: never a token that only answers 401."""
    publish_routes(store, llm=["llm"])
    try:
        issued = tokens.create(store, ["llm"], scopes, models=models, now=time.time())
    except InvalidValue as e:
        assert "at most" in e.rule
        return
    found = store.token_record(token_hash(issued.token))
    assert found is not None and found.scopes == issued.record.scopes
    assert found.models == issued.record.models


class Refused(Exception):
    """What a check raises (the API's is its 404)."""


@pytest.mark.parametrize("action", ["revoke", "rotate"])
def test_revoke_and_rotate_ask_their_check_of_the_token_as_it_is_then(
    store: Store, action: str
) -> None:
    """The caller's right is asked inside the transaction, of the record as it is then: a
    token moved out of a manager's routes since the manager looked is not its to revoke."""
    publish_routes(store, "a", "b")
    made = tokens.create(store, ["a"], token_id="t", now=time.time())
    seen: list[frozenset[str] | None] = []

    def only_route_a(record: TokenRecord | None) -> None:
        seen.append(None if record is None else record.routes)
        if record is None or record.routes != {"a"}:
            raise Refused("not yours")

    tokens.update(store, "t", routes=["b"], now=time.time())  # (meanwhile, by an admin)
    with pytest.raises(Refused):
        if action == "revoke":
            tokens.revoke(store, "t", check=only_route_a)
        else:
            tokens.rotate(store, "t", now=time.time(), check=only_route_a)
    assert seen == [frozenset({"b"})]
    assert store.token_record(token_hash(made.token)) is not None  # untouched


def test_reindex_lists_again_the_tokens_of_a_lost_creation_order(store: Store) -> None:
    publish_routes(store, "a")
    made = [tokens.create(store, ["a"], now=time.time()).record.id for _ in range(3)]
    store.client.delete("extauthz:token-ids")  # (lost, or deleted by hand)
    assert [r.id for _, r in tokens.listing(store) if isinstance(r, TokenRecord)] == []
    assert tokens.reindex(store).added == 3
    listed = [r.id for _, r in tokens.listing(store) if isinstance(r, TokenRecord)]
    assert sorted(listed) == sorted(made)
    assert tokens.reindex(store).added == 0  # (nothing more to do)


def test_a_key_of_the_wrong_type_refuses_a_create_before_anything_is_written(
    store: Store,
) -> None:
    """Inside MULTI/EXEC Redis runs every other command and fails the one on a key of the
    wrong type: the token would live, out of the list. So it is refused before."""
    publish_routes(store, "a")
    store.client.set("extauthz:token-ids", "edited by hand")
    before = set(store.client.keys("extauthz:token:*"))
    with pytest.raises(MalformedRecord, match="token-ids is a string, not a zset"):
        tokens.create(store, ["a"], now=time.time())
    assert set(store.client.keys("extauthz:token:*")) == before
