"""The audit log: each change appends who did what to which, never a secret."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from extauthz.admin import audit, tokens
from extauthz.admin.sync import sync
from extauthz.core.credentials import token_hash
from extauthz.core.policy import parse_policy
from extauthz.storage.store import Store

NOW = time.time()


def test_every_change_is_recorded_with_its_actor(store: Store, tmp_path: Path) -> None:
    now = time.time()  # (the grace below is real time: fakeredis expires keys by the clock)
    sync(store, parse_policy("version: 1\nroutes:\n  m: {access: protected}\n"), actor="ci")
    issued = tokens.create(store, ["m"], ["inference"], token_id="t1", name="bot", now=now)
    tokens.update(store, "t1", scopes=["management"], now=now, actor="admin-token-7")
    rotated = tokens.rotate(store, "t1", grace_seconds=60, now=now)
    tokens.revoke(store, "t1")
    sync(store, parse_policy("version: 1\nroutes:\n  m: {access: protected}\n"))  # no change
    events = audit.tail(store, 10)
    assert [(e["action"], e["target"]) for e in events] == [
        ("policy.sync", "version 1"),
        ("token.create", "t1"),
        ("token.update", "t1"),
        ("token.rotate", "t1"),
        ("token.revoke", "t1"),
    ]
    assert [e["actor"] for e in events][:3] == ["ci", audit.cli_actor(), "admin-token-7"]
    assert audit.cli_actor().startswith("cli:")
    assert events[0]["detail"]["routes"]["added"] == ["m"]
    assert events[1]["detail"]["scopes"] == ["inference"] and events[1]["detail"]["name"] == "bot"
    assert events[2]["detail"]["scopes"] == ["management"]
    assert events[4]["detail"] == {"secrets": 2}
    raw = json.dumps(store.client.xrange("extauthz:audit"))
    for secret in (
        issued.token,
        rotated.token,
        token_hash(issued.token),
        token_hash(rotated.token),
    ):
        assert secret not in raw
    assert audit.tail(store, 2) == events[-2:]


def test_the_stream_is_capped(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit, "MAX_EVENTS", 10)
    for i in range(200):
        audit.record(store, "x", "token.create", f"t{i}", now=NOW)
    assert store.client.xlen("extauthz:audit") < 200
