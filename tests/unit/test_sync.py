from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from extauthz.admin.sync import sync
from extauthz.core.credentials import token_hash
from extauthz.core.policy import parse_policy
from extauthz.errors import PolicyError
from extauthz.storage.store import Store

POLICY = textwrap.dedent(
    """\
    version: 1
    routes:
      a: {access: public}
      b:
        access: protected
        credentials: [bearer, basic]
        basic_username: paperspace
    secrets:
      - {id: b-basic, routes: [b], from_env: B_SECRET}
    """
)
ENV = {"B_SECRET": "first-secret-value"}


def test_first_sync_then_idempotent(store: Store) -> None:
    doc = parse_policy(POLICY)
    first = sync(store, doc, env=ENV)
    assert first.changed and first.version == 1
    assert first.lines() == ["+ route a", "+ route b", "+ secret b-basic"]
    snap = store.load_policy()
    assert snap is not None and set(snap.routes) == {"a", "b"}
    assert token_hash("first-secret-value") in snap.secrets
    assert "first-secret-value" not in str(store.client.hgetall("extauthz:policy"))
    again = sync(store, doc, env=ENV)
    assert not again.changed and again.version == 1 and again.lines() == []


def test_secret_change_is_a_new_version(store: Store) -> None:
    doc = parse_policy(POLICY)
    sync(store, doc, env=ENV)
    result = sync(store, doc, env={"B_SECRET": "second-secret-value"})
    assert result.changed and result.version == 2
    assert result.lines() == ["~ secret b-basic"]
    snap = store.load_policy()
    assert snap is not None
    assert token_hash("second-secret-value") in snap.secrets
    assert token_hash("first-secret-value") not in snap.secrets


def test_dry_run_writes_nothing(store: Store) -> None:
    result = sync(store, parse_policy(POLICY), env=ENV, dry_run=True)
    assert result.changed
    assert store.client.keys("*") == []


def test_prune(store: Store) -> None:
    sync(store, parse_policy(POLICY), env=ENV)
    smaller = parse_policy("version: 1\nroutes: {a: {access: private}}\n")
    kept = sync(store, smaller, env=ENV)
    assert kept.lines() == [
        "~ route a",
        "= route (not in file, kept; --prune removes it) b",
    ]
    snap = store.load_policy()
    assert snap is not None and set(snap.routes) == {"a", "b"} and len(snap.secrets) == 1
    pruned = sync(store, smaller, env=ENV, prune=True)
    assert pruned.lines() == ["- route b", "- secret b-basic"]
    snap = store.load_policy()
    assert snap is not None and set(snap.routes) == {"a"} and not snap.secrets


def test_missing_secret_source_writes_nothing(store: Store, tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as info:
        sync(store, parse_policy(POLICY, "p.yaml"), env={})
    assert (info.value.line, info.value.key) == (9, "secrets[0].from_env")
    assert store.client.keys("*") == []
    from_file = POLICY.replace("from_env: B_SECRET", f"from_file: {tmp_path}/nope")
    with pytest.raises(PolicyError, match="cannot read"):
        sync(store, parse_policy(from_file, "p.yaml"), env={})
    (tmp_path / "s").write_text("file-secret-value\n")
    ok = POLICY.replace("from_env: B_SECRET", f"from_file: {tmp_path}/s")
    sync(store, parse_policy(ok, "p.yaml"), env={})
    snap = store.load_policy()
    assert snap is not None and token_hash("file-secret-value") in snap.secrets
