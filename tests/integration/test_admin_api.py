"""The management API over real HTTP against a real redis-server (and a real extauthz
server for what its changes do to requests); every answer is checked against the API's
OpenAPI document."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from extauthz.admin import teams, tokens
from extauthz.core.credentials import token_hash
from extauthz.dev.ports import free_port, port_open
from extauthz.storage.store import open_store
from tests.support.admin_api import Api, admin_server
from tests.support.check import CheckClient
from tests.support.procs import REPO, RedisServer, extauthz_serve, run_cli, stop, wait_for

pytestmark = pytest.mark.redis

POLICY = """
version: 1
routes:
  a: {access: protected}
  b: {access: protected}
  c: {access: protected}
  capped: {access: protected, max_token_ttl: 1h}
  llm: {access: protected, api: openai}
"""


def _token(url: str, *args: str) -> dict[str, Any]:
    created: dict[str, Any] = json.loads(run_cli(url, "token", "create", *args, "--json").stdout)
    return created


@pytest.fixture
def api(redis_server: RedisServer, tmp_path: Path) -> Iterator[Api]:
    """`extauthz admin` on the policy above; every exchange is checked against its OpenAPI
    document (tests/support/admin_api.py)."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    run_cli(redis_server.url, "sync", str(policy))
    with admin_server(redis_server.url, tmp_path / "admin.log") as api:
        yield api


def test_who_may_do_what(api: Api, redis_server: RedisServer) -> None:
    url = redis_server.url
    admin = _token(url, "--route", "*", "--scope", "admin")["token"]
    manager = _token(url, "--route", "a", "--route", "b", "--scope", "tokens:manage")["token"]
    plain = _token(url, "--route", "a", "--scope", "inference")["token"]
    outside = _token(url, "--route", "c", "--id", "outside")
    for token, status in (
        (None, 401),
        ("eat_nope", 401),
        (plain, 403),
        (admin, 200),
        (manager, 200),
    ):
        code, body = api.call("GET", "/v1/tokens", token)
        assert code == status, (token, body)
        if status != 200:
            assert set(body) == {"error", "message"}
    # tokens:manage: inside its routes only, never granting admin
    code, made = api.call("POST", "/v1/tokens", manager, {"routes": ["a"], "scopes": ["inference"]})
    assert code == 201 and made["token"].startswith("eat_")
    assert api.call("POST", "/v1/tokens", manager, {"routes": ["c"]})[0] == 403
    # may it at all, before is it right: outside its routes is 403, published or not
    assert api.call("POST", "/v1/tokens", manager, {"routes": ["a", "nope"]})[0] == 403
    assert api.call("POST", "/v1/tokens", manager, {"routes": ["*"]})[0] == 403
    assert api.call("POST", "/v1/tokens", manager, {"routes": ["a"], "scopes": ["admin"]})[0] == 403
    assert api.call("GET", f"/v1/tokens/{outside['id']}", manager)[0] == 404
    assert api.call("DELETE", f"/v1/tokens/{outside['id']}", manager)[0] == 404
    listed = [t["id"] for t in api.call("GET", "/v1/tokens", manager)[1]["tokens"]]
    assert made["id"] in listed and outside["id"] not in listed
    assert api.call("GET", "/v1/audit", manager)[0] == 403
    # admin: everything
    assert api.call("GET", f"/v1/tokens/{outside['id']}", admin)[0] == 200
    events = api.call("GET", "/v1/audit", admin)[1]["events"]
    created = [e for e in events if e["action"] == "token.create" and e["target"] == made["id"]]
    assert created and created[0]["actor"].startswith("tok_")  # the manager token's id
    assert made["token"] not in json.dumps(events)


def test_a_token_made_by_the_api_works_at_once_and_stops_when_deleted(
    api: Api, redis_server: RedisServer, tmp_path: Path
) -> None:
    url = redis_server.url
    admin = _token(url, "--route", "*", "--scope", "admin")["token"]
    serve = ("--auth-failure-burst", "0", "--usage-flush", "0.2")
    with extauthz_serve(url, tmp_path / "s.log", *serve) as (port, _):
        client = CheckClient(port)
        code, made = api.call("POST", "/v1/tokens", admin, {"routes": ["a"], "name": "nb"})
        assert code == 201
        bearer = f"Bearer {made['token']}"
        assert client.status("a", bearer) == 200 and client.status("b", bearer) == 403
        code, rotated = api.call("POST", f"/v1/tokens/{made['id']}/rotate", admin, {"grace": "1h"})
        assert code == 200 and client.status("a", f"Bearer {rotated['token']}") == 200
        code, changed = api.call("PATCH", f"/v1/tokens/{made['id']}", admin, {"routes": ["b"]})
        assert code == 200 and changed["routes"] == ["b"]
        assert client.status("b", bearer) == 200 and client.status("a", bearer) == 403
        usage = api.call("GET", f"/v1/tokens/{made['id']}/usage?days=3", admin)
        assert usage[0] == 200 and len(usage[1]["days"]) == 3
        # done; this Redis has no replica, which the answer says (docs/security.md#security-model)
        code, revoked = api.call("DELETE", f"/v1/tokens/{made['id']}", admin)
        assert code == 200 and "no replica" in revoked["warnings"][0]
        assert revoked["revoked"] == 2 and revoked["unconfirmed"] == []
        wait_for(lambda: client.status("b", bearer) == 401, 1.0, "deleted")
        assert client.status("b", f"Bearer {rotated['token']}") == 401
        assert api.call("GET", f"/v1/tokens/{made['id']}", admin)[0] == 404

        # its usage stays readable by an admin, as `token usage` shows it
        def used() -> int:
            code, usage = api.call("GET", f"/v1/tokens/{made['id']}/usage?days=1", admin)
            return usage["days"][0]["allowed"] if code == 200 else -1

        wait_for(lambda: used() == 3, 15, "the revoked token's usage")  # (its three allows)
        assert api.call("GET", "/v1/tokens/nobody-ever/usage", admin)[0] == 404
        client.close()


def test_bad_input_is_400_with_the_field_and_writes_nothing(
    api: Api, redis_server: RedisServer
) -> None:
    url = redis_server.url
    admin = _token(url, "--route", "*", "--scope", "admin")["token"]
    before = redis_server.cli("DEBUG", "DIGEST")
    cases: list[tuple[Any, bytes | None, str]] = [
        ({"routes": ["a"], "extra": 1}, None, "extra"),
        ({"routes": "a"}, None, "routes"),
        ({"routes": []}, None, "routes"),
        ({"routes": ["a b"]}, None, "route"),
        ({"routes": ["a"], "ttl": "soon"}, None, "ttl"),
        ({"routes": ["capped"], "ttl": "2h"}, None, "ttl"),
        ({"routes": ["capped"], "rate_limit": "lots"}, None, "rate_limit"),
        ({"routes": ["a"], "token_limit": "50/s"}, None, "token_limit"),
        ({"routes": ["a"], "token_limit": 50}, None, "token_limit"),
        ({"routes": ["a"], "name": "x" * 300}, None, "name"),
        (None, b"{not json", ""),
        (None, b'{"routes": ["a\xff"]}', ""),  # not UTF-8
        ({"routes": ["a"], "name": "bad\x1b[2J"}, None, "name"),
        ({"routes": ["a"], "ttl": "9" * 15 + "d"}, None, "ttl"),
        (None, b"[" * 10_000, ""),
        (None, b'{"routes": ["a"], "name": "' + b"x" * 70_000 + b'"}', "body larger"),
        # mistakes refused: a typo in a route, LLM fields on a route that counts no LLM tokens
        ({"routes": ["a", "lmm"]}, None, "route: lmm is not a route of the synced policy"),
        (
            {"routes": ["a"], "token_limit": "50/m"},
            None,
            "token_limit: token limits, budgets and models",
        ),
        (
            {"routes": ["a"], "models": ["demo"]},
            None,
            "model: token limits, budgets and models apply",
        ),
        ({"routes": ["llm"], "token_limit": "0/d"}, None, "token_limit: 0 would refuse every"),
        ({"routes": ["a"], "allow_unknown_route": None}, None, "allow_unknown_route"),
        # empty values are given values (refused), never taken for "none given"
        ({"routes": ["a"], "rate_limit": ""}, None, "rate_limit"),
        ({"routes": ["llm"], "token_limit": ""}, None, "token_limit"),
        ({"routes": ["a"], "ttl": ""}, None, "ttl"),
        # what a record could not hold (a token that would only ever answer 401)
        ({"routes": ["llm"], "models": ["m" * 200]}, None, "model"),
        ({"routes": ["a"], "scopes": [f"s{i:03}" + "x" * 120 for i in range(40)]}, None, "scope"),
        ({"routes": ["a"], "team": "nope"}, None, "no team with id 'nope'"),
    ]
    for body, raw, field in cases:
        code, reply = api.call("POST", "/v1/tokens", admin, body, raw)
        assert code == 400, (body, raw and raw[:40], reply)
        assert reply["error"] == "invalid_request" and field in reply["message"], reply
    # a chunked body has no size up front: refused before it is read, whatever follows
    for chunks in ([b'{"routes": ["a"]}'], [b"x" * 6_000] * 40):
        conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
        conn.request(
            "POST",
            "/v1/tokens",
            body=iter(chunks),
            headers={"authorization": f"Bearer {admin}", "content-type": "application/json"},
            encode_chunked=True,
        )
        resp = conn.getresponse()
        assert resp.status == 400 and b"chunked" in resp.read()
        conn.close()
    assert redis_server.cli("DEBUG", "DIGEST") == before
    policy = api.call("GET", "/v1/policy", admin)[1]
    assert sorted(policy["routes"]) == ["a", "b", "c", "capped", "llm"]
    with urllib.request.urlopen(api.base + "/openapi.json", timeout=5) as resp:
        spec = json.loads(resp.read())
    assert "/v1/tokens/{token_id}/rotate" in spec["paths"]
    # a token limit set, changed and removed through the API
    code, made = api.call("POST", "/v1/tokens", admin, {"routes": ["llm"], "token_limit": "50/m"})
    assert code == 201 and made["token_limit"] == "50/m"
    path = f"/v1/tokens/{made['id']}"
    assert api.call("PATCH", path, admin, {"token_limit": "9/mo"})[1]["token_limit"] == "9/mo"
    assert api.call("PATCH", path, admin, {"name": "n"})[1]["token_limit"] == "9/mo"
    assert api.call("PATCH", path, admin, {"token_limit": "none"})[1]["token_limit"] is None


def test_unknown_routes_are_refused_unless_the_body_allows_them(
    api: Api, redis_server: RedisServer
) -> None:
    admin = _token(redis_server.url, "--route", "*", "--scope", "admin")["token"]
    code, reply = api.call("POST", "/v1/tokens", admin, {"routes": ["later"]})
    assert (code, reply["error"]) == (400, "invalid_request")
    assert reply["message"] == (
        "route: later is not a route of the synced policy (version 1): fix the name, or send "
        '"allow_unknown_route": true if its policy comes later'
    )
    body = {"routes": ["later"], "token_limit": "9/d", "allow_unknown_route": True}
    code, made = api.call("POST", "/v1/tokens", admin, body)
    assert code == 201 and made["routes"] == ["later"] and made["token_limit"] == "9/d"
    assert "route later is not in the synced policy" in made["warnings"][0]
    assert "they do once later is one" in made["warnings"][1]
    path = f"/v1/tokens/{made['id']}"
    code, reply = api.call("PATCH", path, admin, {"routes": ["a", "soon"]})
    assert code == 400 and "soon is not a route of the synced policy" in reply["message"]
    code, reply = api.call("PATCH", path, admin, {"routes": ["a"]})  # keeps its token limit
    assert code == 400 and reply["message"].startswith(
        "route: token limits, budgets and models apply"
    )
    change = {"routes": ["a", "soon"], "token_limit": "none", "allow_unknown_route": True}
    code, changed = api.call("PATCH", path, admin, change)
    assert code == 200 and changed["routes"] == ["a", "soon"] and changed["token_limit"] is None
    assert "route soon is not in the synced policy" in changed["warnings"][0]


def test_failed_authentications_are_limited_per_address(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    run_cli(
        redis_server.url,
        "sync",
        str(REPO / "examples/policy.yaml"),
        env={"DENSENET161_SECRET": "x" * 16},
    )
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "extauthz", "admin", "--redis-url", redis_server.url,
         "--admin-listen", f"127.0.0.1:{port}", "--auth-failure-burst", "3",
         "--auth-failure-rate", "0.1", "--admin-request-timeout", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO,
    )  # fmt: skip
    admin = _token(redis_server.url, "--route", "*", "--scope", "admin")["token"]
    try:
        wait_for(lambda: port_open(port), 20, "extauthz admin")
        api = Api(port)
        statuses = [api.call("GET", "/v1/tokens", "eat_guess")[0] for _ in range(6)]
        assert statuses[:3] == [401, 401, 401] and statuses[-1] == 429
        # a valid credential is never refused by the limit, from the very
        # address that flooded it; X-Forwarded-For from a client that is not a trusted
        # proxy (here: any loopback client) names nobody else
        assert api.call("GET", "/v1/tokens", admin)[0] == 200
        for forwarded in ("203.0.113.9", "198.51.100.1, 203.0.113.10"):
            req = urllib.request.Request(
                api.base + "/v1/tokens",
                headers={"authorization": "Bearer eat_guess", "x-forwarded-for": forwarded},
            )
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(req, timeout=5)
            assert refused.value.code == 429
        # slow clients (headers or body a byte at a time) cannot hold the
        # server: the admin is answered at once, and they are cut after the deadline
        slow = []
        for i in range(200):
            conn = socket.create_connection(("127.0.0.1", port), timeout=5)
            if i % 2:
                conn.sendall(b"GET /v1/tokens HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            else:
                conn.sendall(
                    b"POST /v1/tokens HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                    b"\r\nContent-Length: 60000\r\nAuthorization: Bearer " + admin.encode()
                    + b"\r\n\r\n{"
                )  # fmt: skip
            slow.append(conn)
        started = time.monotonic()
        assert api.call("GET", "/v1/tokens", admin)[0] == 200
        assert time.monotonic() - started < 1.0
        for conn in slow:
            conn.sendall(b"x")  # still trickling
        deadline = time.monotonic() + 5
        for conn in slow:
            conn.settimeout(max(0.1, deadline - time.monotonic()))
            assert conn.recv(1024) == b"", "a slow client was not cut"  # closed by the server
            conn.close()
        assert time.monotonic() - started < 5
    finally:
        stop(proc)


def _held(port: int, peers: set[int]) -> set[int]:
    """Which of the client ports `peers` the server listening on `port` still holds a
    connection from (/proc/net/tcp: its side of the connection, established)."""
    held = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, remote, state = line.split()[1:4]
        if state == "01" and int(local.split(":")[1], 16) == port:
            held.add(int(remote.split(":")[1], 16))
    return held & peers


def test_clients_that_never_read_their_answers_cannot_hold_the_server(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Connections that pipeline requests for the console's script and never read the
    answers are cut (RST: the answers they did not read are dropped, not kept for them)
    once their send buffer has stayed full for the request timeout; the admin is answered
    (at the latest once they are cut: until then they may hold the server's slots)."""
    admin = _token(redis_server.url, "--route", "*", "--scope", "admin")["token"]
    flags = ("--admin-max-connections", "20", "--admin-request-timeout", "1")
    with admin_server(redis_server.url, tmp_path / "admin.log", *flags) as api:
        with urllib.request.urlopen(api.base + "/console.js", timeout=5) as resp:
            one_answer = len(resp.read())
        assert api.send("GET", "/v1/tokens", admin)[0] == 200
        asked = 2000
        hogs = []
        for _ in range(10):
            conn = socket.socket()
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            conn.connect(("127.0.0.1", api.port))
            conn.setblocking(False)
            request = b"GET /console.js HTTP/1.1\r\nHost: x\r\n\r\n"
            with contextlib.suppress(BlockingIOError):
                for _ in range(asked):
                    conn.send(request)
            hogs.append(conn)
        listing = urllib.request.Request(
            api.base + "/v1/tokens", headers={"authorization": f"Bearer {admin}"}
        )

        def admin_answered() -> bool:
            try:
                with urllib.request.urlopen(listing, timeout=5) as resp:
                    return bool(resp.status == 200)
            except OSError:  # (a 503 while the hogs hold every slot)
                return False

        wait_for(admin_answered, 30, "the admin answered")
        # the server cuts each 1 s after its buffer filled (a load on the machine may delay
        # that, never prevent it); what it had sent is in the kernel's buffers, not the server's
        ports = {conn.getsockname()[1] for conn in hogs}
        wait_for(lambda: not _held(api.port, ports), 30, "the hogs were cut")
        for conn in hogs:  # what is left to read: what was on its way when it was cut
            conn.setblocking(True)
            conn.settimeout(5)
            read = 0
            with contextlib.suppress(ConnectionResetError):
                while chunk := conn.recv(1 << 16):
                    read += len(chunk)
            assert read < asked * one_answer / 4, f"{read} bytes: the server kept its answers"
            conn.close()


def test_past_its_connections_the_server_answers_the_documented_503(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """While `--admin-max-connections` connections are held, a request gets the API's JSON
    `unavailable` error (checked against the OpenAPI document by `Api.send`), a flood of
    them is one log line, and the server answers again once they go."""
    admin = _token(redis_server.url, "--route", "*", "--scope", "admin")["token"]
    log = tmp_path / "admin.log"
    flags = ("--admin-max-connections", "3", "--admin-request-timeout", "30")
    with admin_server(redis_server.url, log, *flags) as api:
        assert api.send("GET", "/v1/tokens", admin)[0] == 200
        idle = [socket.create_connection(("127.0.0.1", api.port)) for _ in range(3)]
        try:
            wait_for(lambda: api.send("GET", "/v1/tokens", admin)[0] == 503, 10, "the 503")
            for _ in range(5):
                status, body = api.send("GET", "/v1/tokens", admin)
                assert status == 503
                assert json.loads(body)["error"] == "unavailable"
            with urllib.request.urlopen(api.base + "/console.js", timeout=5) as resp:
                pytest.fail(f"answered {resp.status} past the limit")
        except urllib.error.HTTPError as e:
            assert e.code == 503
            assert e.headers["content-type"] == "application/json"
            assert json.loads(e.read())["error"] == "unavailable"
        finally:
            for conn in idle:
                conn.close()
        wait_for(lambda: api.send("GET", "/v1/tokens", admin)[0] == 200, 10, "answers again")
    # seven or more requests refused: the first logged at once, the rest within 10 s in one
    # more line at most (a slow machine may take longer than 10 s)
    lines = [line for line in log.read_text().splitlines() if "503" in line]
    assert 1 <= len(lines) <= 2 and "answered 1 request(s) 503" in lines[0], lines


def test_a_manager_sees_and_acts_on_only_what_it_could_have_created(
    api: Api, redis_server: RedisServer
) -> None:
    """A delegated manager never reaches an admin, a peer manager, a token outside its routes
    or one that outlives it (404: not even its existence); a model token never manages,
    whatever its scopes; a manager's tokens never outlive it
    (docs/design.md#management-plane-authorization)."""
    store = open_store(redis_server.url, "extauthz:", 2.0)

    def made(routes: str, scopes: str = "", ttl: int | None = None, **kw: Any) -> Any:
        return tokens.create(store, routes.split(), scopes.split(), ttl, now=time.time(), **kw)

    manager = made("a", "tokens:manage", 3600)
    star = made("*", "tokens:manage")
    admin_a = made("a", "admin", token_id="admin-a")
    admin_star = made("*", "admin", token_id="admin-star")
    peer = made("a", "tokens:manage", token_id="peer")
    forever_a = made("a", token_id="forever-a")  # outlives the 1 h manager
    mine = made("a", "inference", 600, token_id="mine")
    forbidden = [admin_a, admin_star, peer]
    for who, theirs in ((manager, [*forbidden, forever_a]), (star, forbidden)):
        for target in theirs:
            tid = target.record.id
            for method, path, body in (
                ("GET", f"/v1/tokens/{tid}", None),
                ("PATCH", f"/v1/tokens/{tid}", {"name": "x"}),
                ("POST", f"/v1/tokens/{tid}/rotate", {}),
                ("GET", f"/v1/tokens/{tid}/usage", None),
                ("DELETE", f"/v1/tokens/{tid}", None),
            ):
                code, reply = api.call(method, path, who.token, body)
                assert (code, reply["error"]) == (404, "not_found"), (who.record.id, method, path)
            listed = {t["id"] for t in api.call("GET", "/v1/tokens", who.token)[1]["tokens"]}
            assert tid not in listed
        assert api.call("GET", f"/v1/tokens/{mine.record.id}", who.token)[0] == 200
    # the targets are untouched: their secrets still sign in
    assert api.call("GET", "/v1/audit", admin_star.token)[0] == 200
    # what it makes never outlives it, and it cannot stretch what it has
    code, child = api.call("POST", "/v1/tokens", manager.token, {"routes": ["a"]})
    assert code == 201 and child["expires_at"] <= manager.record.expires_at
    assert api.call("POST", "/v1/tokens", manager.token, {"routes": ["a"], "ttl": "2h"})[0] == 403
    for change in ({"no_expiry": True}, {"ttl": "2h"}, {"scopes": ["admin"]}):
        assert api.call("PATCH", f"/v1/tokens/{mine.record.id}", manager.token, change)[0] in (
            400,
            403,
        ), change
    assert api.call("PATCH", f"/v1/tokens/{mine.record.id}", manager.token, {"ttl": "5m"})[0] == 200
    # a model token given `admin` by hand is not an admin; `token reindex` makes it a
    # management token (and then it is one)
    legacy = "eat_" + "l" * 43
    key = f"extauthz:token:{token_hash(legacy)}"
    redis_server.cli("HSET", key, "id", "legacy", "routes", "*", "scopes", "admin")
    code, reply = api.call("GET", "/v1/tokens", legacy)
    assert code == 403 and "reindex" in reply["message"]
    assert "1 tokens with scope admin" in run_cli(redis_server.url, "token", "reindex").stdout
    assert redis_server.cli("HGET", key, "kind") == "management"
    assert api.call("GET", "/v1/tokens", legacy)[0] == 200
    store.close()


def test_a_team_manager_acts_on_exactly_its_teams_tokens(
    api: Api, redis_server: RedisServer
) -> None:
    """A manager whose token names a team makes tokens only in it (by default there), sees
    and acts on exactly its team's tokens (404 for the rest, other teams included), reads
    its team and its usage, and never changes a team."""
    store = open_store(redis_server.url, "extauthz:", 2.0)
    now = time.time()
    for team in ("acme", "beta"):
        teams.create(store, team, models=["small"], now=now)

    def made(routes: str, scopes: str = "", ttl: int | None = 600, **kw: Any) -> Any:
        return tokens.create(store, routes.split(), scopes.split(), ttl, now=now, **kw)

    lead = made("a llm", "tokens:manage", 3600, team="acme")
    ours = made("a", team="acme", token_id="ours")
    theirs = made("a", team="beta", token_id="theirs")
    loose = made("a", token_id="loose")  # (no team)
    code, child = api.call("POST", "/v1/tokens", lead.token, {"routes": ["a"]})
    assert code == 201 and child["team"] == "acme"  # (in its team by default)
    for body in ({"routes": ["a"], "team": "beta"}, {"routes": ["b"]}):
        code, reply = api.call("POST", "/v1/tokens", lead.token, body)
        assert code == 403 and reply["error"] == "forbidden", body
    # a team it may not see is refused as any other: nothing tells it which teams exist
    code, reply = api.call("POST", "/v1/tokens", lead.token, {"routes": ["a"], "team": "zeta"})
    assert code == 403, reply
    listed = {t["id"] for t in api.call("GET", "/v1/tokens", lead.token)[1]["tokens"]}
    assert listed == {"ours", child["id"]}
    for target in (theirs, loose):
        tid = target.record.id
        assert api.call("GET", f"/v1/tokens/{tid}", lead.token)[0] == 404
        assert api.call("DELETE", f"/v1/tokens/{tid}", lead.token)[0] == 404
    # it cannot move one of its own out of its team, or into another
    code, _ = api.call("PATCH", f"/v1/tokens/{ours.record.id}", lead.token, {"no_team": True})
    assert code == 403
    code, _ = api.call("PATCH", f"/v1/tokens/{ours.record.id}", lead.token, {"team": "beta"})
    assert code == 403
    assert api.call("PATCH", f"/v1/tokens/{ours.record.id}", lead.token, {"name": "n"})[0] == 200
    # its team: read, never written; other teams do not exist for it
    assert api.call("GET", "/v1/teams/acme", lead.token)[1]["tokens"] == 3  # (itself too)
    assert api.call("GET", "/v1/teams/acme/usage", lead.token)[0] == 200
    assert [t["id"] for t in api.call("GET", "/v1/teams", lead.token)[1]["teams"]] == ["acme"]
    assert api.call("PATCH", "/v1/teams/acme", lead.token, {"name": "x"})[0] == 403
    assert api.call("DELETE", "/v1/teams/acme", lead.token)[0] == 403
    assert api.call("GET", "/v1/teams/beta", lead.token)[0] == 404
    assert api.call("POST", "/v1/teams", lead.token, {"id": "new"})[0] == 403
    # ?team=: its team's tokens it may see (not its own management token), no other team's
    listed = {t["id"] for t in api.call("GET", "/v1/tokens?team=acme", lead.token)[1]["tokens"]}
    assert listed == {"ours", child["id"]}
    assert api.call("GET", "/v1/tokens?team=beta", lead.token)[0] == 404
    # fields that mean nothing on a management token are refused
    admin = made("*", "admin", None)
    code, reply = api.call(
        "POST", "/v1/tokens", admin.token,
        {"routes": ["a"], "scopes": ["tokens:manage"], "rate_limit": "5/m"},
    )  # fmt: skip
    assert code == 400 and "management token" in reply["message"]
    store.close()


def test_a_teams_tokens_are_listed_by_the_server_a_page_at_a_time(
    api: Api, redis_server: RedisServer
) -> None:
    """GET /v1/tokens?team=: the team's tokens in creation order, paged like the full
    list; a token moved out since (its id still in the team's set) is not among them."""
    store = open_store(redis_server.url, "extauthz:", 2.0)
    now = time.time()
    admin = tokens.create(store, ["*"], ["admin"], now=now).token
    teams.create(store, "acme", now=now)
    ids = []
    for n in range(5):
        tokens.create(store, ["a"], now=now, token_id=f"other{n}")  # (interleaved, no team)
        ids.append(tokens.create(store, ["a"], now=now, team="acme", token_id=f"t{n}").record.id)
    tokens.update(store, "t2", team=None, now=now)  # moved out: its id stays in the set
    seen: list[str] = []
    cursor = ""
    while True:
        status, page = api.call("GET", f"/v1/tokens?team=acme&limit=2{cursor}", admin)
        assert status == 200 and all(t["team"] == "acme" for t in page["tokens"])
        seen += [t["id"] for t in page["tokens"]]
        if page["next_cursor"] is None:
            break
        cursor = f"&cursor={page['next_cursor']}"
    assert seen == ["t0", "t1", "t3", "t4"]
    status, page = api.call("GET", "/v1/tokens?team=acme&route=b", admin)
    assert (status, page["tokens"]) == (200, [])
    store.close()


def test_pages_end_with_a_null_cursor_and_errors_are_json(
    api: Api, redis_server: RedisServer
) -> None:
    """The page after the last is never reached through a cursor; a bad cursor is 400; every
    error is JSON with the security headers."""
    store = open_store(redis_server.url, "extauthz:", 2.0)
    admin = tokens.create(store, ["*"], ["admin"], now=time.time()).token
    for _ in range(13):
        tokens.create(store, ["a"], now=time.time())
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(3):
        query = f"?limit=7{'' if cursor is None else f'&cursor={cursor}'}"
        code, page = api.call("GET", "/v1/tokens" + query, admin)
        assert code == 200, page
        seen += [t["id"] for t in page["tokens"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 14 and cursor is None
    for bad in ("nan", "inf", "-inf", "1e309", "-1", "x", ""):
        code, reply = api.call("GET", f"/v1/tokens?cursor={bad}", admin)
        assert (code, reply["error"]) == (400, "invalid_request"), bad
    # an unknown store error (a key of the wrong type under the ids index) is JSON, not a 500
    redis_server.cli("DEL", "extauthz:token-ids")
    redis_server.cli("SET", "extauthz:token-ids", "x")
    req = urllib.request.Request(
        api.base + "/v1/tokens", headers={"authorization": f"Bearer {admin}"}
    )
    with pytest.raises(urllib.error.HTTPError) as failed:
        urllib.request.urlopen(req, timeout=10)
    assert failed.value.code in (409, 503)
    assert failed.value.headers["content-type"] == "application/json"
    assert "default-src 'none'" in failed.value.headers["content-security-policy"]
    assert set(json.loads(failed.value.read())) == {"error", "message"}
    store.close()


def test_a_change_is_delivered_with_what_went_wrong_around_it(
    api: Api, redis_server: RedisServer
) -> None:
    """With the audit stream unwritable, a create and a rotate still deliver their secret (with
    a warning), and a server that does not confirm a change is named in the answer instead of
    dropped."""
    url = redis_server.url
    admin = _token(url, "--route", "*", "--scope", "admin")["token"]
    redis_server.cli("DEL", "extauthz:audit")
    redis_server.cli("SET", "extauthz:audit", "not a stream")
    code, made = api.call("POST", "/v1/tokens", admin, {"routes": ["a"]})
    assert code == 201 and made["token"].startswith("eat_")
    assert any("audit" in w for w in made["warnings"])
    code, rotated = api.call("POST", "/v1/tokens/" + made["id"] + "/rotate", admin, {})
    assert code == 200 and rotated["token"].startswith("eat_")
    assert any("audit" in w for w in rotated["warnings"])
    cli = run_cli(url, "token", "create", "--route", "a", check=False)
    assert cli.returncode == 0 and "eat_" in cli.stdout and "audit" in cli.stderr
    # a live server that never confirms (its heartbeat key, no listener)
    redis_server.cli("SET", "extauthz:servers:ghost:1", "1", "PX", "60000")
    redis_server.cli("SADD", "extauthz:servers", "ghost:1")
    code, changed = api.call("PATCH", "/v1/tokens/" + made["id"], admin, {"name": "n"})
    assert code == 200 and changed["unconfirmed"] == ["ghost:1"]
    code, revoked = api.call("DELETE", "/v1/tokens/" + made["id"], admin)
    assert code == 200 and revoked["unconfirmed"] == ["ghost:1"]
