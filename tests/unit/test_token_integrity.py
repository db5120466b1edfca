"""Data integrity of the token lifecycle (docs/tokens.md): every path that changes a token acts
on a secret of it in rotation grace; a failed audit write never loses a change or its secret;
imports audit each token in the same transaction as its write; keys and events edited by hand
into odd shapes are reported, never a crash."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from extauthz.admin import audit, tokens
from extauthz.admin.schema import AuditEvent
from extauthz.admin.sync import sync
from extauthz.admin.token_files import export_lines, plan_import, read_import_file
from extauthz.core.credentials import token_hash
from extauthz.core.policy import parse_policy
from extauthz.errors import BadImportLine, StoreUnavailable, UnknownToken
from extauthz.storage.store import Store
from extauthz.storage.token_index import ImportItem, TokenIndex
from tests.support.policies import publish_routes

POLICY = """
version: 1
routes:
  m: {access: protected}
  n: {access: protected, credentials: [bearer, basic], basic_username: u}
secrets:
  - {id: n-basic, routes: [n], from_env: N_SECRET}
"""


def _now() -> float:
    return time.time()  # (real time: fakeredis expires keys by the clock)


def _import(store: Store, path: Path, lines: list[dict[str, Any]], **kw: Any) -> str:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    entries = read_import_file(str(path), _now())
    plan = plan_import(store, entries, str(path), _now())

    def events(batch: list[ImportItem]) -> list[dict[str, str]]:
        return [audit.event("t", f"token.{i.action}", i.record.id) for i in batch]

    TokenIndex(store).write_many(plan.items, events, **kw)
    return plan.summary(False)


def _rotated(store: Store) -> tuple[str, str]:
    """A token rotated with a 1 h grace: (old secret, new secret)."""
    publish_routes(store, "m")
    old = tokens.create(store, ["m"], ["inference"], token_id="g", now=_now()).token
    new = tokens.rotate(store, "g", grace_seconds=3600, now=_now()).token
    return old, new


def _scopes(store: Store, secret: str) -> frozenset[str] | None:
    record = store.token_record(token_hash(secret))
    return None if record is None else record.scopes


@pytest.mark.parametrize("path", ["update", "import", "revoke", "rotate"])
def test_every_lifecycle_path_reaches_a_secret_in_grace(
    store: Store, tmp_path: Path, path: str
) -> None:
    old, new = _rotated(store)
    if path == "update":
        tokens.update(store, "g", scopes=["batch"], now=_now())
        assert _scopes(store, old) == _scopes(store, new) == frozenset({"batch"})
    elif path == "import":  # export, change the scopes, import: the old secret follows
        (line,) = (json.loads(x) for x in export_lines(store))
        assert _import(store, tmp_path / "i.jsonl", [{**line, "scopes": ["batch"]}]).startswith(
            "wrote 1 tokens: 0 new, 1 updated"
        )
        assert _scopes(store, old) == _scopes(store, new) == frozenset({"batch"})
        assert TokenIndex(store).get("g").previous == token_hash(old)
    elif path == "rotate":
        tokens.rotate(store, "g", now=_now())
        assert _scopes(store, old) is None and _scopes(store, new) is None
    # revoke, after any of them, removes every secret of the id
    tokens.revoke(store, "g")
    assert _scopes(store, old) is None and _scopes(store, new) is None
    with pytest.raises(UnknownToken):
        tokens.show(store, "g")


def test_a_failed_audit_write_delivers_the_change_and_the_secret(store: Store) -> None:
    publish_routes(store, "m")
    store.client.set("extauthz:audit", "not a stream")
    made = tokens.create(store, ["m"], token_id="a1", now=_now())
    assert made.token and any("audit" in w for w in made.warnings)
    assert store.token_record(token_hash(made.token)) is not None
    rotated = tokens.rotate(store, "a1", now=_now())
    assert rotated.token and any("audit" in w for w in rotated.warnings)
    assert store.token_record(token_hash(rotated.token)) is not None
    assert any("audit" in w for w in tokens.update(store, "a1", name="x", now=_now()).warnings)
    assert any("audit" in w for w in tokens.revoke(store, "a1").warnings)


def test_import_refuses_a_route_secret(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("N_SECRET", "route-secret-value-1")
    sync(store, parse_policy(POLICY))
    with pytest.raises(BadImportLine, match="route secret 'n-basic'"):
        _import(
            store,
            tmp_path / "i.jsonl",
            [{"id": "x", "routes": ["m"], "token": "route-secret-value-1"}],
        )
    assert store.client.exists("extauthz:token-ids") == 0


def test_import_audits_each_token_with_its_write_also_when_interrupted(
    store: Store, tmp_path: Path
) -> None:
    publish_routes(store, "m")
    lines = [{"id": f"t{i}", "routes": ["m"], "sha256": f"{i:064x}"} for i in range(1_200)]
    real = store.client.pipeline
    calls = {"n": 0}

    def dies_on_the_second_batch(**kw: Any) -> Any:
        pipe = real(**kw)
        if kw.get("transaction"):
            calls["n"] += 1
            if calls["n"] == 2:
                pipe.execute = lambda **_: (_ for _ in ()).throw(redis.ConnectionError("killed"))
        return pipe

    store.client.pipeline = dies_on_the_second_batch
    with pytest.raises(StoreUnavailable):
        _import(store, tmp_path / "i.jsonl", lines)
    store.client.pipeline = real
    audited = [e["target"] for e in audit.tail(store, 10_000)]
    assert len(audited) == 500 == store.client.zcard("extauthz:token-ids")
    _import(store, tmp_path / "i.jsonl", lines)  # the rerun finishes it
    audited = [e["target"] for e in audit.tail(store, 10_000)]
    assert sorted(audited) == sorted(f"t{i}" for i in range(1_200))  # each exactly once


def test_hand_edited_index_entries_and_records_never_stop_the_tools(store: Store) -> None:
    publish_routes(store, "m")
    tokens.create(store, ["m"], token_id="ok", now=_now())
    tokens.create(store, ["m"], token_id="bad-entry", now=_now())
    bad = tokens.create(store, ["m"], token_id="bad-time", now=_now())
    store.client.delete("extauthz:token-id:bad-entry")
    store.client.set("extauthz:token-id:bad-entry", "x")
    store.client.hset(store.token_key(token_hash(bad.token)), "expires_at", "abc")
    listed = {
        token_id: type(record).__name__
        for _, record in tokens.listing(store)
        for token_id in [getattr(record, "id", str(record))]
    }
    assert listed.get("ok") == "TokenRecord" and len(listed) == 3
    assert [json.loads(x)["id"] for x in export_lines(store)] == ["ok"]
    result = tokens.reindex(store)
    assert result.added == 0
    # revoke removes what it can name, whatever its shape
    assert tokens.revoke(store, "bad-time").count == 1
    assert store.token_record(token_hash(bad.token)) is None
    tokens.revoke(store, "bad-entry")
    assert not store.client.exists("extauthz:token-id:bad-entry")
    assert [r.id for _, r in tokens.listing(store)] == ["ok"]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "fields",
    [
        {"time": "1e3"},
        {"time": "notanumber"},
        {"time": "inf"},
        {"time": "-5"},
        {"time": "1" * 400},
        {"target": "caf\udcff.jsonl"},  # a file name that was not UTF-8
        {"actor": "\x1b[2J"},
        {"detail": "[" * 10_000},
        {"detail": "{not json"},
        {"detail": "5"},  # JSON, but not an object
        {"detail": "[1, 2]"},
        {"detail": "null"},
    ],
)
def test_odd_audit_events_are_shown_not_crashed_on(store: Store, fields: dict[str, str]) -> None:
    event = {"time": "1700000000", "actor": "a", "action": "x", "target": "t", "detail": "{}"}
    store.client.xadd("extauthz:audit", {**event, **fields})
    (shown,) = audit.tail(store, 1)
    json.dumps(shown).encode("utf-8")  # what the API sends: never fails
    assert shown["time"] is None or isinstance(shown["time"], int)
    AuditEvent.model_validate(shown)  # as its OpenAPI document says (a detail is an object)


def test_the_cli_actor_is_one_field_whatever_the_user_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LOGNAME", "alice token.create tok_fake {}")
    actor = audit.cli_actor()
    assert actor == 'cli:"alice token.create tok_fake {}"'
    monkeypatch.setenv("LOGNAME", "bob")
    assert audit.cli_actor() == "cli:bob"


@pytest.mark.parametrize("score", ["+inf", "-inf", "99999999999999", "-1"])
def test_hand_written_usage_numbers_never_crash_a_reader(store: Store, score: str) -> None:
    """Last-used and day counters written by hand."""
    publish_routes(store, "m")
    now = _now()
    tokens.create(store, ["m"], token_id="u", now=now)
    store.client.execute_command("ZADD", "extauthz:usage:last-used", score, "u")
    store.client.hset(
        f"extauthz:usage:{time.strftime('%Y-%m-%d', time.gmtime(now))}", "a:u", "12.5"
    )
    assert tokens.show(store, "u").last_used is None
    assert [r.last_used for _, r in tokens.listing(store)] == [None]  # type: ignore[union-attr]
    report = tokens.usage(store, "u", 1, now)
    assert report["last_used"] is None and report["days"][0]["allowed"] == 0
