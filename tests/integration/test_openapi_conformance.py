"""The management API's OpenAPI document is the API: every operation, with every status the
document lists for it, is called on a real `extauthz admin` over a real redis-server (with a
replica for a revocation confirmed everywhere, stopped for 503), and each exchange is
checked against the document the server serves (tests/support/admin_api.py): a status it
does not list or a body not of its shape fails. At the end, every documented (operation,
status) must have been seen."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from extauthz.admin import tokens
from extauthz.core.credentials import token_hash
from extauthz.storage.store import open_store
from tests.support.admin_api import Api, admin_server
from tests.support.github_signing import keys_document, sign
from tests.support.procs import REPO, RedisServer, run_cli, wait_for

pytestmark = pytest.mark.redis

POLICY = """
version: 1
routes:
  a: {access: protected, rate_limit: 600/m, max_token_ttl: 30d}
  b: {access: protected, scopes: [inference]}
  llm:
    access: protected
    api: openai
    models: [gpt-small, "mini-*"]
    token_limit: 100000/d
    match: [{host: llm.example, path_prefix: /v1/}]
"""


def test_every_operation_answers_every_documented_status_as_documented(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    url = redis_server.url
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    run_cli(url, "sync", str(policy))
    store = open_store(url, "extauthz:", 2.0)
    now = time.time()
    admin = tokens.create(store, ["*"], ["admin"], now=now).token
    manager = tokens.create(store, ["a", "b"], ["tokens:manage"], 3600, now=now).token
    model = tokens.create(store, ["a"], ["inference"], now=now).token
    target = tokens.create(store, ["a"], name="target", now=now).record.id
    keys = tmp_path / "github-keys.json"
    keys.write_bytes(keys_document((GITHUB_KEY_ID, GITHUB, True)))
    scanning = ("--secret-scanning-keys", str(keys))
    with admin_server(url, tmp_path / "admin.log", *scanning) as api:
        served = api.conformance.document
        committed = json.loads((REPO / "docs/openapi.json").read_text())
        assert served == committed, "the server's /openapi.json is not docs/openapi.json"
        calls = operations(api, target)

        for method, path, body in calls:
            if path == SCANNING:  # (no bearer token: its own refusals, in secret_scanning)
                continue
            assert api.send(method, path, None, body)[0] == 401
            assert api.send(method, path, "eat_" + "x" * 43, body)[0] == 401
            assert api.send(method, path, model, body)[0] == 403
            # a body of no announced size is refused before anything reads it
            assert api.send(method, path, admin, body, chunked=True)[0] == 400

        successes(api, redis_server, admin, manager, target)
        teams_(api, redis_server, admin, manager)
        refusals(api, admin, manager)
        malformed(api, redis_server, admin)
        secret_scanning(api, model)

        # a revocation confirmed by a replica (and no live server left unconfirmed): 204
        replica = RedisServer(tmp_path, extra=("--replicaof", "127.0.0.1", str(redis_server.port)))
        replica.start()
        try:
            wait_for(
                lambda: "connected_slaves:1" in redis_server.cli("INFO", "replication"),
                10,
                "replica",
            )
            wait_for(
                lambda: "master_link_status:up" in replica.cli("INFO", "replication"), 10, "sync"
            )
            gone = tokens.create(store, ["a"], now=time.time()).record.id
            status, text = api.send("DELETE", f"/v1/tokens/{gone}", admin)
            assert (status, text) == (204, b"")
        finally:
            replica.stop()

    # failed authentications from one address: 429 on every operation
    with admin_server(url, tmp_path / "limited.log", "--auth-failure-burst", "1",
                      "--auth-failure-rate", "0.001", *scanning) as limited:  # fmt: skip
        assert limited.send("GET", "/v1/policy", "eat_guess")[0] == 401
        for method, path, body in operations(limited, target):
            assert limited.send(method, path, "eat_guess", body)[0] == 429
        api.conformance.seen |= limited.conformance.seen

        # Redis gone: 503 on every operation, even for a token that was valid
        redis_server.stop()
        for method, path, body in operations(limited, target):
            if path == SCANNING:  # (signed: a bad signature would be a 429 here)
                raw = json.dumps(body).encode()
                assert limited.send("POST", path, raw=raw, headers=signed(raw))[0] == 503
                continue
            assert limited.send(method, path, admin, body)[0] == 503
        api.conformance.seen |= limited.conformance.seen
    store.close()

    missing = api.conformance.documented - api.conformance.seen
    assert not missing, f"documented but never answered: {sorted(missing)}"


def operations(api: Api, token_id: str) -> list[tuple[str, str, object]]:
    """One call of each documented operation (on `token_id`), with a body it takes."""
    bodies: dict[tuple[str, str], object] = {
        ("POST", "/v1/tokens"): {"routes": ["a"]},
        ("PATCH", "/v1/tokens/{token_id}"): {"name": "renamed"},
        ("POST", "/v1/tokens/{token_id}/rotate"): {},
        ("POST", "/v1/teams"): {"id": "probe"},
        ("PATCH", "/v1/teams/{team_id}"): {"name": "renamed"},
        ("POST", SCANNING): [{"token": "eat_x", "type": "t", "url": "", "source": "content"}],
    }
    calls: list[tuple[str, str, object]] = []
    for template, methods in api.conformance.document["paths"].items():
        for method in methods:
            key = (method.upper(), template)
            path = template.replace("{token_id}", token_id).replace("{team_id}", TEAM)
            calls.append((key[0], path, bodies.get(key)))
    return calls


SCANNING = "/v1/secret-scanning"
GITHUB = ec.generate_private_key(ec.SECP256R1())
GITHUB_KEY_ID = "f" * 64


def signed(body: bytes) -> dict[str, str]:
    """The headers GitHub sends with a report."""
    return {
        "Github-Public-Key-Identifier": GITHUB_KEY_ID,
        "Github-Public-Key-Signature": sign(GITHUB, body),
    }


def secret_scanning(api: Api, model: str) -> None:
    """GitHub's reports: the feedback for a signed one (a live token revoked), 400 for a
    signed body that is not a report, 401 for what GitHub did not sign."""
    report = json.dumps([{"token": model, "type": "extauthz_token", "url": "https://github.com/x",
                          "source": "commit"}, {"token": "eat_other", "type": "t"}]).encode()  # fmt: skip
    status, text = api.send("POST", SCANNING, raw=report, headers=signed(report))
    labels = [f["label"] for f in json.loads(text)]
    assert (status, labels) == (200, ["true_positive", "false_positive"]), text
    for raw in (b"[", b'{"token": "x"}', b'[{"token": 1}]'):
        status, text = api.send("POST", SCANNING, raw=raw, headers=signed(raw))
        assert (status, json.loads(text)["error"]) == (400, "invalid_request"), text
    for headers in ({}, {**signed(report), "Github-Public-Key-Identifier": "e" * 64},
                    {**signed(b"[]")}):  # fmt: skip
        status, text = api.send("POST", SCANNING, raw=report, headers=headers)
        assert (status, json.loads(text)["error"]) == (401, "unauthorized"), text
    # the body limit and chunked bodies, as for every operation
    assert api.send("POST", SCANNING, raw=b"[" + b" " * (64 << 10) + b"]")[0] == 400
    assert api.send("POST", SCANNING, chunked=True, headers=signed(b"{}"))[0] == 400


TEAM = "acme"  # (made by `teams`, deleted at its end and made again for the 429s and 503s)


def teams_(api: Api, redis: RedisServer, admin: str, manager: str) -> None:
    """The team operations: successes, conflicts, what a manager may not do, ids nobody
    has, and records edited by hand."""
    made = {"id": TEAM, "name": "Acme", "models": ["gpt-small"], "rate_limit": "100/m"}
    status, team = api.call("POST", "/v1/teams", admin, made)
    assert status == 201 and team["rate_limit"] == "100/m" and team["warnings"] == []
    assert api.call("POST", "/v1/teams", admin, made)[1]["error"] == "conflict"
    assert api.call("POST", "/v1/teams", admin, {"id": "Not An Id"})[0] == 400
    status, member = api.call("POST", "/v1/tokens", admin, {"routes": ["llm"], "team": TEAM})
    assert status == 201 and member["team"] == TEAM
    assert api.call("POST", "/v1/tokens", admin, {"routes": ["a"], "team": "nope"})[0] == 400
    status, listed = api.call("GET", "/v1/teams", admin)
    assert status == 200 and [t["id"] for t in listed["teams"]] == [TEAM]
    assert api.call("GET", "/v1/teams", manager)[1]["teams"] == []  # (not its team)
    status, shown = api.call("GET", f"/v1/teams/{TEAM}", admin)
    assert status == 200 and shown["tokens"] == 1
    status, page = api.call("GET", f"/v1/tokens?team={TEAM}", admin)
    assert status == 200 and [t["id"] for t in page["tokens"]] == [member["id"]]
    for who, team in ((manager, TEAM), (admin, "nobody"), (admin, "Not-An-Id")):
        status, reply = api.call("GET", f"/v1/tokens?team={team}", who)
        assert (status, reply["error"]) == (404, "not_found"), (team, reply)
    change = {"token_limit": "5000/d", "all_models": True, "rate_limit": "none"}
    status, changed = api.call("PATCH", f"/v1/teams/{TEAM}", admin, change)
    assert status == 200 and changed["models"] is None and changed["rate_limit"] is None
    status, usage = api.call("GET", f"/v1/teams/{TEAM}/usage?days=2", admin)
    assert status == 200 and usage["tokens"] == 1 and len(usage["days"]) == 2
    # a manager without a team: may not write teams (403), does not see this one (404)
    assert api.call("POST", "/v1/teams", manager, {"id": "mine"})[0] == 403
    for method, suffix, body in (("GET", "", None), ("PATCH", "", {"name": "x"}),
                                 ("DELETE", "", None), ("GET", "/usage", None)):  # fmt: skip
        status, reply = api.call(method, f"/v1/teams/{TEAM}{suffix}", manager, body)
        assert (status, reply["error"]) == (404, "not_found"), (method, suffix)
        status, reply = api.call(method, f"/v1/teams/nobody{suffix}", admin, body)
        assert (status, reply["error"]) == (404, "not_found"), (method, suffix)
    # edited by hand: 409 on every team operation that reads it
    redis.cli("HSET", f"extauthz:team:{TEAM}", "rate_limit", "lots")
    for method, suffix, body in (("GET", "", None), ("PATCH", "", {"name": "x"}),
                                 ("DELETE", "", None), ("GET", "/usage", None)):  # fmt: skip
        status, reply = api.call(method, f"/v1/teams/{TEAM}{suffix}", admin, body)
        assert (status, reply["error"]) == (409, "malformed_record"), (method, suffix, reply)
    redis.cli("HDEL", f"extauthz:team:{TEAM}", "rate_limit")
    redis.cli("RENAME", "extauthz:team-ids", "extauthz:team-ids:kept")
    redis.cli("SET", "extauthz:team-ids", "edited by hand")
    assert api.call("GET", "/v1/teams", admin)[1]["error"] == "malformed_record"
    redis.cli("DEL", "extauthz:team-ids")
    redis.cli("RENAME", "extauthz:team-ids:kept", "extauthz:team-ids")
    # deleted: refused while it has tokens, then with them
    status, reply = api.call("DELETE", f"/v1/teams/{TEAM}", admin)
    assert (status, reply["error"]) == (409, "conflict") and "revoke_tokens" in reply["message"]
    status, deleted = api.call("DELETE", f"/v1/teams/{TEAM}?revoke_tokens=true", admin)
    assert status == 200 and deleted["deleted"] is True
    assert api.call("GET", f"/v1/tokens/{member['id']}", admin)[0] == 404
    assert api.call("POST", "/v1/teams", admin, {"id": TEAM})[0] == 201  # (for what follows)


def successes(api: Api, redis: RedisServer, admin: str, manager: str, target: str) -> None:
    """The 2xx answers, in their fuller shapes: pages, warnings, unconfirmed servers, usage
    per model, a policy with LLM and match settings, audit events."""
    ids: list[str] = []
    cursor: str | None = None
    while True:
        query = "?limit=2" + ("" if cursor is None else f"&cursor={cursor}")
        status, page = api.call("GET", "/v1/tokens" + query, admin)
        assert status == 200
        ids += [t["id"] for t in page["tokens"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert cursor.isdigit(), cursor  # text, a creation position
    assert target in ids and len(ids) == len(set(ids))
    assert api.call("GET", "/v1/tokens?route=b&limit=1000", manager)[0] == 200

    body = {
        "routes": ["llm", "unpublished"],  # warns: a route not in the policy
        "scopes": ["inference"],
        "name": "llm client",
        "ttl": "1h",
        "rate_limit": "60/m",
        "models": ["gpt-small"],
        "token_limit": "5000/d",
        "allow_unknown_route": True,
    }
    status, made = api.call("POST", "/v1/tokens", admin, body)
    assert status == 201 and made["token"].startswith("eat_") and made["warnings"]
    path = f"/v1/tokens/{made['id']}"
    assert api.call("GET", path, admin)[0] == 200
    assert api.call("GET", path, manager)[0] == 404  # not within its routes
    change = {"routes": ["llm"], "ttl": "30m", "all_models": True, "token_limit": "none"}
    status, changed = api.call("PATCH", path, admin, change)
    assert status == 200 and changed["models"] is None and changed["unconfirmed"] == []
    status, rotated = api.call("POST", path + "/rotate", admin, {"grace": "1m"})
    assert status == 200 and rotated["token"] != made["token"]
    assert api.call("POST", path + "/rotate", admin)[0] == 200  # no body at all

    # usage with requests and LLM tokens per model, as the usage flush writes them
    store = open_store(redis.url, "extauthz:", 2.0)
    today = int(time.time() // 86400)
    store.add_usage(
        "conformance",
        {(made["id"], today): [3, 1]},
        7,
        models={(made["id"], today, "gpt-small"): 3},
        tokens={(made["id"], today, "gpt-small"): [100, 20, 0, 10, 5, 90]},
    )
    store.raise_last_used({made["id"]: time.time()})
    store.close()
    status, usage = api.call("GET", path + "/usage?days=2", admin)
    assert status == 200 and len(usage["days"]) == 2
    assert usage["days"][-1]["models"]["gpt-small"]["requests"] == 3, usage
    assert "models" not in usage["days"][0] and usage["last_used"] is not None

    status, policy = api.call("GET", "/v1/policy", manager)
    assert status == 200 and policy["routes"]["llm"]["api"] == "openai"
    status, tail = api.call("GET", "/v1/audit?limit=5", admin)
    assert status == 200 and tail["events"][-1]["action"] == "token.rotate"

    # a live server that never confirms: named in the PATCH and the 200 of a DELETE
    redis.cli("SET", "extauthz:servers:ghost:1", "1", "PX", "60000")
    redis.cli("SADD", "extauthz:servers", "ghost:1")
    status, changed = api.call("PATCH", path, admin, {"name": "n"})
    assert status == 200 and changed["unconfirmed"] == ["ghost:1"]
    status, revoked = api.call("DELETE", path, admin)
    assert status == 200 and revoked["unconfirmed"] == ["ghost:1"] and revoked["revoked"] == 1
    redis.cli("DEL", "extauthz:servers:ghost:1", "extauthz:servers")


def refusals(api: Api, admin: str, manager: str) -> None:
    """400 for what the document lets through but the API refuses, and what it does not;
    403 for what a manager may not do; 404 for ids nobody (or not this caller) has."""
    for method, path, body in (
        ("GET", "/v1/tokens?limit=0", None),
        ("GET", "/v1/tokens?cursor=x", None),
        ("POST", "/v1/tokens", {"routes": []}),
        ("POST", "/v1/tokens", {"routes": ["a"], "ttl": "soon"}),
        ("GET", "/v1/audit?limit=x", None),
        ("GET", "/v1/tokens/nope/usage?days=0", None),
    ):
        status, reply = api.call(method, path, admin, body)
        assert (status, reply["error"]) == (400, "invalid_request"), (path, reply)
    assert api.call("POST", "/v1/tokens", manager, {"routes": ["b", "c"]})[0] == 403
    assert api.call("GET", "/v1/audit", manager)[0] == 403
    for method, suffix in (("GET", ""), ("PATCH", ""), ("DELETE", ""), ("POST", "/rotate"),
                           ("GET", "/usage")):  # fmt: skip
        change = {"name": "x"} if method == "PATCH" else None
        status, reply = api.call(method, "/v1/tokens/nobody" + suffix, admin, change)
        assert (status, reply["error"]) == (404, "not_found"), (method, suffix)


def malformed(api: Api, redis_server: RedisServer, admin: str) -> None:
    """409 on every operation: keys edited by hand into what extauthz cannot read (each put
    back afterwards)."""
    store = open_store(redis_server.url, "extauthz:", 2.0)
    broken = tokens.create(store, ["a"], token_id="broken", now=time.time())
    store.close()
    key = f"extauthz:token:{token_hash(broken.token)}"
    redis_server.cli("HSET", key, "expires_at", "soon")
    for method, suffix, body in (
        ("GET", "", None),
        ("PATCH", "", {"name": "x"}),
        ("POST", "/rotate", {}),
        ("GET", "/usage", None),
    ):
        status, reply = api.call(method, "/v1/tokens/broken" + suffix, admin, body)
        assert (status, reply["error"]) == (409, "malformed_record"), (method, suffix, reply)
    redis_server.cli("HDEL", key, "expires_at")

    def swapped(name: str, method: str, path: str, body: object = None) -> None:
        """`name` as a string instead of its type for one call."""
        redis_server.cli("RENAME", name, name + ":kept")
        redis_server.cli("SET", name, "edited by hand")
        try:
            status, reply = api.call(method, path, admin, body)
            assert (status, reply["error"]) == (409, "malformed_record"), (name, path, reply)
        finally:
            redis_server.cli("DEL", name)
            redis_server.cli("RENAME", name + ":kept", name)

    swapped("extauthz:token-ids", "GET", "/v1/tokens")
    swapped("extauthz:policy", "POST", "/v1/tokens", {"routes": ["a"]})
    swapped("extauthz:policy", "GET", "/v1/policy")
    swapped("extauthz:audit", "GET", "/v1/audit")
    # (the secret is deleted, then the index cannot be written: an error, and a retry is a
    # 404, never a revocation that seemed to succeed and did not)
    swapped("extauthz:token-ids", "DELETE", "/v1/tokens/broken")
    assert api.call("DELETE", "/v1/tokens/broken", admin)[0] == 404
