from __future__ import annotations

import os
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from extauthz.admin import sync as sync_module
from extauthz.admin.sync import sync
from extauthz.core.credentials import token_hash
from extauthz.core.policy import load_policy_file, parse_policy
from extauthz.errors import MalformedRecord, PolicyError
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


# --- sync --watch ---------------------------------------------------------------------------


def _watching(store: Store, path: Path, **kw: Any) -> tuple[threading.Event, threading.Thread]:
    stop = threading.Event()
    thread = threading.Thread(
        target=sync_module.watch, args=(store, str(path), stop), kwargs={"interval": 0.02, **kw}
    )
    thread.start()
    return stop, thread


def _routes(store: Store) -> dict[str, str]:
    snapshot = store.load_policy()
    assert snapshot is not None
    return {name: r.access.value for name, r in snapshot.routes.items()}


def _wait(check: Callable[[], bool], seconds: float = 5) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_an_edit_made_while_the_file_is_read_is_published(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\nroutes:\n  a: {access: public}\n")
    real = load_policy_file
    edited: list[bool] = []

    def read_then_edit(path: str) -> Any:
        doc = real(path)
        if not edited:  # the file changes right after it was read, before anything else
            edited.append(True)
            new = tmp_path / "p.new"
            new.write_text("version: 1\nroutes:\n  a: {access: protected}\n  b: {access: public}\n")
            os.replace(new, policy)
        return doc

    monkeypatch.setattr(sync_module, "load_policy_file", read_then_edit)
    stop, thread = _watching(store, policy)
    try:
        _wait(lambda: store.load_policy() is not None and "b" in _routes(store))
        assert _routes(store)["a"] == "protected"
    finally:
        stop.set()
        thread.join()


def test_two_watchers_of_different_files_back_off_and_say_so_once(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    one, two = tmp_path / "one.yaml", tmp_path / "two.yaml"
    one.write_text("version: 1\nroutes:\n  a: {access: public}\n")
    two.write_text("version: 1\nroutes:\n  a: {access: private}\n")
    watchers = [_watching(store, path, prune=True) for path in (one, two)]
    time.sleep(2.0)  # 100 intervals of 0.02 s
    for stop, thread in watchers:
        stop.set()
        thread.join()
    version = store.policy_version()
    assert version is not None and version.version <= 30, version  # (was ~100 a watcher)
    assert caplog.text.count("another writer keeps publishing") <= 4  # (once a streak each)
    assert "another writer keeps publishing" in caplog.text


def test_a_published_snapshot_that_cannot_be_read_is_replaced(store: Store, tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\nroutes:\n  a: {access: public}\n")
    store.client.hset(
        "extauthz:policy", mapping={"version": "7", "snapshot": "{bad", "digest": "x"}
    )
    with pytest.raises(MalformedRecord):  # (a plain sync says so and changes nothing)
        sync(store, parse_policy(policy.read_text(), str(policy)))
    stop, thread = _watching(store, policy)
    try:
        _wait(lambda: store.client.hget("extauthz:policy", "snapshot") != "{bad")
        assert _routes(store) == {"a": "public"}
    finally:
        stop.set()
        thread.join()
