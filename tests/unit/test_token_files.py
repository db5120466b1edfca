"""Import and export of JSON Lines: every line checked before Redis is touched."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from extauthz.admin import tokens
from extauthz.admin.token_files import export_lines, plan_import, read_import_file
from extauthz.core.credentials import token_hash
from extauthz.core.policy import PolicySnapshot, parse_policy
from extauthz.errors import BadImportLine, MalformedRecord
from extauthz.storage.store import Store
from extauthz.storage.token_index import TokenIndex
from tests.support.policies import publish_routes

NOW = 1_800_000_000
SECRET = "s3cret-key-1"


def _write(path: Path, *lines: Any) -> str:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return str(path)


def _import(store: Store, path: str, replace: bool = False) -> str:
    entries = read_import_file(path, NOW)
    plan = plan_import(store, entries, path, NOW, replace=replace)
    TokenIndex(store).write_many(plan.items)
    return plan.summary(dry_run=False)


GOOD = {"id": "k1", "routes": ["m"], "scopes": ["inference"], "token": SECRET}


def test_import_twice_changes_nothing_and_the_secret_works(store: Store, tmp_path: Path) -> None:
    publish_routes(store, "m")
    path = _write(
        tmp_path / "t.jsonl",
        GOOD,
        "",
        {"id": "k2", "routes": ["*"], "sha256": "A" * 64, "expires_at": NOW + 60, "name": "n"},
    )
    assert _import(store, path) == "wrote 2 tokens: 2 new, 0 updated, 0 replaced; 0 unchanged"
    record = store.token_record(token_hash(SECRET))
    assert record is not None and record.id == "k1" and record.created_at == NOW
    assert tokens.show(store, "k2").expires_at == NOW + 60
    assert store.client.expiretime(store.token_key("a" * 64)) == NOW + 60
    dump = {k: store.client.dump(k) for k in sorted(store.client.keys("*"))}
    assert _import(store, path) == "wrote 0 tokens: 0 new, 0 updated, 0 replaced; 2 unchanged"
    assert {k: store.client.dump(k) for k in sorted(store.client.keys("*"))} == dump


def test_export_then_import_elsewhere_round_trips(store: Store, tmp_path: Path) -> None:
    publish_routes(store, "m")
    a = tokens.create(store, ["m"], ["inference"], ttl_seconds=3600, name="é", now=NOW)
    tokens.create(store, ["*"], token_id="b", now=NOW)
    lines = list(export_lines(store))
    assert all(a.token not in line for line in lines)
    assert [json.loads(x)["id"] for x in lines] == [a.record.id, "b"]
    path = _write(tmp_path / "e.jsonl", *lines)
    other = Store(store.client, "other:")
    publish_routes(other, "m")
    _import(other, path)
    assert tokens.show(other, a.record.id) == a.record
    assert other.token_record(token_hash(a.token)) == a.record
    assert [json.loads(x)["id"] for x in export_lines(store, route="m")] == [a.record.id, "b"]


def test_an_id_with_another_secret_is_a_conflict_unless_replace(
    store: Store, tmp_path: Path
) -> None:
    publish_routes(store, "m")
    old = tokens.create(store, ["m"], token_id="k1", now=NOW)
    path = _write(tmp_path / "t.jsonl", GOOD)
    with pytest.raises(BadImportLine, match=r"t.jsonl:1: id: a token with id 'k1' already"):
        _import(store, path)
    assert store.token_record(token_hash(old.token)) is not None
    assert "1 replaced" in _import(store, path, replace=True)
    assert store.token_record(token_hash(old.token)) is None
    assert tokens.show(store, "k1").scopes == {"inference"}


def test_a_secret_of_another_id_is_always_a_conflict(store: Store, tmp_path: Path) -> None:
    publish_routes(store, "m")
    other = tokens.create(store, ["m"], token_id="other", now=NOW)
    path = _write(tmp_path / "t.jsonl", {**GOOD, "token": other.token})
    with pytest.raises(BadImportLine, match="this secret belongs to token 'other'"):
        _import(store, path, replace=True)


def test_a_changed_record_is_updated_in_place(store: Store, tmp_path: Path) -> None:
    publish_routes(store, "m", "n")
    _import(store, _write(tmp_path / "a.jsonl", GOOD))
    assert "1 updated" in _import(store, _write(tmp_path / "b.jsonl", {**GOOD, "routes": ["n"]}))
    assert tokens.show(store, "k1").routes == {"n"}


def test_max_token_ttl_applies_to_imports(store: Store, tmp_path: Path) -> None:
    routes = parse_policy("version: 1\nroutes:\n  m: {access: protected, max_token_ttl: 1h}\n")
    store.update_policy(lambda _: PolicySnapshot(1, routes.routes))
    path = _write(tmp_path / "t.jsonl", GOOD)
    with pytest.raises(BadImportLine, match=r":1: expires_at: route m allows tokens of at most 1h"):
        _import(store, path)
    ok = _write(tmp_path / "ok.jsonl", {**GOOD, "expires_at": NOW + 3600})
    entries = read_import_file(ok, NOW)
    plan = plan_import(store, entries, ok, NOW)
    assert plan.count("create") == 1 and plan.warnings == []


def test_a_route_the_policy_does_not_have_is_refused_unless_allowed(
    store: Store, tmp_path: Path
) -> None:
    publish_routes(store, "m", "web", llm=["llm"])
    path = _write(
        tmp_path / "u.jsonl", GOOD, {**GOOD, "id": "k2", "routes": ["m", "lmm"], "token": "x" * 8}
    )
    with pytest.raises(BadImportLine) as info:
        _import(store, path)
    assert str(info.value) == (
        f"{path}:2: routes: lmm is not a route of the synced policy (version 1; did you mean "
        "llm?): fix the name, or pass --allow-unknown-route if its policy comes later"
    )
    assert store.client.keys("extauthz:token*") == []  # nothing written
    entries = read_import_file(path, NOW)
    plan = plan_import(store, entries, path, NOW, allow_unknown_route=True)
    assert plan.count("create") == 2
    assert plan.warnings == ["route lmm (1 tokens) is not in the synced policy"]
    # LLM fields need an LLM route (or, allowed, one that may become one)
    for field, value in (("token_limit", "9/h"), ("models", ["demo*"])):
        llm = _write(tmp_path / "l.jsonl", {**GOOD, "routes": ["web"], field: value})
        with pytest.raises(
            BadImportLine, match=rf":1: {field}: token limits, budgets and models apply"
        ):
            _import(store, llm)
    fine = _write(tmp_path / "f.jsonl", {**GOOD, "routes": ["web", "llm"], "token_limit": "9/h"})
    assert "1 new" in _import(store, fine)


def test_with_no_policy_synced_named_routes_are_refused(store: Store, tmp_path: Path) -> None:
    path = _write(
        tmp_path / "t.jsonl", {**GOOD, "routes": ["*"]}, {**GOOD, "id": "k2", "token": "x" * 8}
    )
    with pytest.raises(BadImportLine) as info:
        _import(store, path)
    assert str(info.value).endswith(
        ":2: routes: m is not a known route: no policy has been synced yet: run `extauthz sync "
        "POLICY.yaml` first, or pass --allow-unknown-route if its policy comes later"
    )
    plan = plan_import(store, read_import_file(path, NOW), path, NOW, allow_unknown_route=True)
    assert plan.warnings == ["no policy synced yet: routes not checked: m (1 tokens)"]
    only_star = _write(tmp_path / "s.jsonl", {**GOOD, "routes": ["*"]})
    assert "1 new" in _import(store, only_star)


@pytest.mark.parametrize(
    ("line", "where"),
    [
        ("{not json", ":2: not JSON"),
        ("[1, 2]", ":2: not a JSON object"),
        ("[" * 60_000, ":2: nested too deeply"),
        (b"\xff\xfe".decode("latin-1"), ":2: not"),
        ({**GOOD, "id": "k2", "extra": 1}, ":2: extra: unknown field"),
        ({**GOOD, "id": "bad id"}, ":2: id: use letters"),
        ({**GOOD, "id": 7}, ":2: id: must be a string"),
        ({**GOOD, "id": "k2", "routes": []}, ":2: routes: a token needs at least one"),
        ({**GOOD, "id": "k2", "routes": "m"}, ":2: routes: must be a list"),
        ({**GOOD, "id": "k2", "routes": ["a b"]}, ":2: routes: use letters"),
        ({**GOOD, "id": "k2", "scopes": ["x,y"]}, ":2: scopes: use letters"),
        ({**GOOD, "id": "k2", "name": "a\x1b[2J"}, ":2: name: use printable"),
        ({**GOOD, "id": "k2", "expires_at": NOW - 1}, ":2: expires_at: is in the past"),
        ({**GOOD, "id": "k2", "expires_at": 10**30}, ":2: expires_at: is in the past"),
        ({**GOOD, "id": "k2", "expires_at": "soon"}, ":2: expires_at: must be unix seconds"),
        ({**GOOD, "id": "k2", "expires_at": True}, ":2: expires_at: must be unix seconds"),
        ({**GOOD, "id": "k2", "created_at": -5}, ":2: created_at: must be unix seconds"),
        ({**GOOD, "id": "k2", "rate_limit": "10 per m"}, ":2: rate_limit: use N/UNIT"),
        ({**GOOD, "id": "k2", "rate_limit": 10}, ":2: rate_limit: must be a string"),
        ({**GOOD, "id": "k2", "token": "short"}, ":2: token: 8 to 4096"),
        ({**GOOD, "id": "k2", "token": "has space in it"}, ":2: token: 8 to 4096"),
        ({**GOOD, "id": "k2", "token": None}, ":2: token: 8 to 4096"),
        ({**GOOD, "id": "k2", "sha256": "0" * 64}, ":2: token: give either"),
        ({"id": "k2", "routes": ["m"]}, ":2: token: give either"),
        ({"id": "k2", "routes": ["m"], "sha256": "g" * 64}, ":2: sha256: 64 hexadecimal"),
        (GOOD, ":2: id: same id 'k1' as line 1"),
        ({**GOOD, "id": "k2"}, ":2: token: same secret as line 1"),
        ("x" * (70 << 10), ":2: longer than 65536 bytes"),
    ],
)
def test_a_bad_line_is_named_and_nothing_is_written(
    store: Store, tmp_path: Path, line: Any, where: str
) -> None:
    path = _write(tmp_path / "t.jsonl", GOOD, line)
    with pytest.raises(BadImportLine) as info:
        _import(store, path)
    assert where in str(info.value) and str(info.value).startswith(path)
    assert "\n" not in str(info.value) and "\x1b" not in str(info.value)
    assert store.client.keys("*") == []


def test_files_that_are_not_regular_are_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (str(fifo), str(tmp_path), "/dev/zero", str(tmp_path / "missing")):
        with pytest.raises(BadImportLine, match=r"not a regular file|cannot read"):
            read_import_file(path, NOW)


def test_bytes_that_are_not_utf8(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b'\n{"id": "\xff"}\n')
    with pytest.raises(BadImportLine, match=r"t.jsonl:2: not UTF-8 text"):
        read_import_file(str(path), NOW)


def test_replace_also_ends_a_rotation_grace(store: Store, tmp_path: Path) -> None:
    publish_routes(store, "m")
    first = tokens.create(store, ["m"], token_id="k1", ttl_seconds=3600, now=NOW)
    second = tokens.rotate(store, "k1", grace_seconds=600, now=NOW)
    assert store.token_record(token_hash(first.token)) is not None  # in its grace
    assert "1 replaced" in _import(store, _write(tmp_path / "t.jsonl", GOOD), replace=True)
    assert store.token_record(token_hash(first.token)) is None
    assert store.token_record(token_hash(second.token)) is None
    assert store.token_record(token_hash(SECRET)) is not None


def test_replacing_a_token_with_the_secret_it_had_before_its_rotation_keeps_it(
    store: Store, tmp_path: Path
) -> None:
    """An export from before a rotation, imported with --replace during the grace: the old
    secret is written back as the token's, never deleted as "the secret in grace"."""
    publish_routes(store, "m")
    first = tokens.create(store, ["m"], token_id="k1", ttl_seconds=3600, now=NOW)
    (before,) = [json.loads(line) for line in export_lines(store)]
    second = tokens.rotate(store, "k1", grace_seconds=600, now=NOW)
    assert "1 replaced" in _import(store, _write(tmp_path / "t.jsonl", before), replace=True)
    assert store.token_record(token_hash(first.token)) is not None  # the token, whole again
    assert store.token_record(token_hash(second.token)) is None
    assert tokens.show(store, "k1").id == "k1"


def test_a_model_token_given_admin_by_hand_is_never_imported_as_an_admin(
    store: Store, tmp_path: Path
) -> None:
    """A record made by hand as a model token with scope admin is no admin (its kind says
    model); exported and imported, it must not become one."""
    publish_routes(store, "m")
    store.client.hset(
        store.token_key(token_hash("hand-made-secret")),
        mapping={"id": "hand", "routes": "m", "scopes": "admin"},
    )
    TokenIndex(store).reindex()
    store.client.hset(store.token_key(token_hash("hand-made-secret")), "kind", "model")
    (line,) = [json.loads(x) for x in export_lines(store)]
    assert line["kind"] == "model" and line["scopes"] == ["admin"]
    store.client.flushall()
    publish_routes(store, "m")
    with pytest.raises(BadImportLine, match=r"t.jsonl:1: kind: its scopes make it a management"):
        _import(store, _write(tmp_path / "t.jsonl", line))
    assert store.token_record(token_hash("hand-made-secret")) is None


def test_an_audit_log_of_the_wrong_type_refuses_an_import_before_anything_is_written(
    store: Store, tmp_path: Path
) -> None:
    publish_routes(store, "m")
    store.client.set("extauthz:audit", "edited by hand")
    path = _write(tmp_path / "t.jsonl", GOOD)
    entries = read_import_file(path, NOW)
    plan = plan_import(store, entries, path, NOW)
    with pytest.raises(MalformedRecord, match="audit is a string, not a stream"):
        TokenIndex(store).write_many(plan.items, audit=lambda batch: [])
    assert store.token_record(token_hash(SECRET)) is None
