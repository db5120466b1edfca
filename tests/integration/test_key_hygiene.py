"""Key hygiene against a real redis-server and a real `extauthz serve` over gRPC: checksummed
secrets (docs/tokens.md#secret-format)."""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Iterator
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import pytest

from extauthz.core.credentials import BASE62, CHECKSUMMED_TOKEN, checksum_fails, token_hash
from tests.support.check import CheckClient
from tests.support.procs import RedisServer, extauthz_serve, run_cli

pytestmark = pytest.mark.redis

POLICY = """version: 1
routes:
  model: {access: protected}
  paper: {access: protected, credentials: [basic], basic_username: paperspace}
"""
LOOKUPS = ("hgetall", "pttl")  # a token lookup: HGETALL + PTTL, pipelined


@pytest.fixture
def served(redis_server: RedisServer, tmp_path: Path) -> Iterator[tuple[RedisServer, CheckClient]]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    run_cli(redis_server.url, "sync", str(policy))
    # the failed-authentication limit off: only the checksum may keep a request from Redis
    with extauthz_serve(redis_server.url, tmp_path / "serve.log", "--auth-failure-burst", "0") as (
        port,
        _,
    ):
        client = CheckClient(port)
        try:
            yield redis_server, client
        finally:
            client.close()


def lookups(server: RedisServer) -> int:
    """Token lookup commands Redis has run so far (its own counter)."""
    total = 0
    for line in server.cli("INFO", "commandstats").splitlines():
        name, _, rest = line.partition(":")
        if name.removeprefix("cmdstat_") in LOOKUPS:
            total += int(rest.split(",")[0].removeprefix("calls="))
    return total


def bad_secret() -> str:
    while True:
        secret = "eat_" + "".join(secrets.choice(BASE62) for _ in range(38))
        if checksum_fails(secret):
            return secret


def basic(password: str) -> str:
    return "Basic " + base64.b64encode(f"paperspace:{password}".encode()).decode()


def create(url: str, *args: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(run_cli(url, "token", "create", *args, "--json").stdout)
    return data


def test_failed_checksums_never_reach_redis(served: tuple[RedisServer, CheckClient]) -> None:
    server, client = served
    tok = create(server.url, "--route", "model", "--route", "paper")
    assert CHECKSUMMED_TOKEN.fullmatch(tok["token"]) and not checksum_fails(tok["token"])
    assert client.status("model", f"Bearer {tok['token']}") == 200
    assert client.status("paper", basic(tok["token"])) == 200
    unknown = client.check("model", "Bearer eat_unknown-but-looked-up")

    before = lookups(server)
    for i in range(2000):
        source = f"198.51.{i >> 8}.{i & 255}"
        if i % 10:
            resp = client.check("model", f"Bearer {bad_secret()}", source=source)
            # the same 401 an unknown token gets: status, challenge and body
            assert resp.denied_response == unknown.denied_response
        else:
            assert client.status("paper", basic(bad_secret()), source=source) == 401
    assert lookups(server) == before

    # the counter does see lookups: random secrets of the older form are each looked up
    for _ in range(20):
        assert client.status("model", f"Bearer eat_{secrets.token_urlsafe(32)}") == 401
    assert lookups(server) == before + 2 * 20


def test_rotate_mints_the_new_form_and_older_secrets_keep_working(
    served: tuple[RedisServer, CheckClient],
) -> None:
    server, client = served
    # a secret of the older form (eat_ + 43 URL-safe base64), written as before by hand
    old = "eat_" + secrets.token_urlsafe(32)
    server.cli("HSET", f"extauthz:token:{token_hash(old)}", "id", "legacy", "routes", "model")
    assert client.status("model", f"Bearer {old}") == 200

    tok = create(server.url, "--route", "model")
    rotated = json.loads(run_cli(server.url, "token", "rotate", tok["id"], "--json").stdout)
    assert CHECKSUMMED_TOKEN.fullmatch(rotated["token"])
    assert not checksum_fails(rotated["token"])
    assert client.status("model", f"Bearer {rotated['token']}") == 200


def test_import_refuses_a_secret_whose_checksum_fails(
    served: tuple[RedisServer, CheckClient], tmp_path: Path
) -> None:
    server, _ = served
    lines = tmp_path / "tokens.jsonl"
    lines.write_text(json.dumps({"id": "typo", "routes": ["model"], "token": bad_secret()}) + "\n")
    result = run_cli(server.url, "token", "import", str(lines), check=False)
    assert result.returncode != 0
    assert "checksum is wrong" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# --- allowed_cidrs ----------------------------------------------------------------------------


def test_allow_cidr_cli_round_trip(redis_server: RedisServer, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    run_cli(redis_server.url, "sync", str(policy))
    url = redis_server.url
    run_cli(url, "team", "create", "lab", "--allow-cidr", "10.0.0.0/8", "--json")
    made = create(url, "--id", "ci", "--route", "model", "--team", "lab",
                  "--allow-cidr", "192.0.2.0/24", "--allow-cidr", "2001:db8::/32")  # fmt: skip
    assert made["allowed_cidrs"] == ["192.0.2.0/24", "2001:db8::/32"]
    fields = redis_server.cli(
        "HGET", f"extauthz:token:{token_hash(made['token'])}", "allowed_cidrs"
    )
    assert fields.strip() == "192.0.2.0/24,2001:db8::/32"  # as docs/redis.md says
    exported = run_cli(url, "token", "export").stdout
    assert json.loads(exported)["allowed_cidrs"] == ["192.0.2.0/24", "2001:db8::/32"]
    updated = json.loads(run_cli(url, "token", "update", "ci", "--name", "x", "--json").stdout)
    assert updated["allowed_cidrs"] == made["allowed_cidrs"]  # kept when not given
    cleared = run_cli(url, "token", "update", "ci", "--allow-cidr", "none", "--json").stdout
    assert json.loads(cleared)["allowed_cidrs"] is None
    team = json.loads(run_cli(url, "team", "show", "lab", "--json").stdout)
    assert team["allowed_cidrs"] == ["10.0.0.0/8"]
    run_cli(url, "team", "update", "lab", "--allow-cidr", "none")
    assert json.loads(run_cli(url, "team", "show", "lab", "--json").stdout)["allowed_cidrs"] is None
    for args in (
        ("token", "create", "--route", "model", "--allow-cidr", "10.0.0.1/8"),
        ("team", "update", "lab", "--allow-cidr", "bogus"),
    ):
        result = run_cli(url, *args, check=False)
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert "allow-cidr" in result.stderr


@pytest.mark.envoy
def test_allowed_cidrs_through_envoy_from_two_loopback_addresses(tmp_path: Path) -> None:
    from extauthz.admin import teams, tokens
    from extauthz.config import Settings
    from tests.support.procs import local_stack

    with local_stack(tmp_path / "stack", Settings(auth_failure_burst=100000)) as stack:
        store = stack.store()
        now = time.time()
        bound = tokens.create(store, ["densenet161"], ["inference"], now=now,
                              allowed_cidrs=["127.0.0.1"]).token  # fmt: skip
        teams.create(store, "lab", allowed_cidrs=["127.0.0.1/32"])
        member = tokens.create(store, ["densenet161"], ["inference"], now=now, team="lab").token
        free = tokens.create(store, ["densenet161"], ["inference"], now=now).token
        port = stack.ports.external.port

        def post(token: str, source: str) -> tuple[int, str]:
            conn = HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
            try:
                conn.request("POST", "/predictions/densenet161", body=b"{}",
                             headers={"authorization": f"Bearer {token}"})  # fmt: skip
                resp = conn.getresponse()
                return resp.status, resp.read().decode()
            finally:
                conn.close()

        for _ in range(3):  # alternating: each address keeps its own answer (the memo)
            for token in (bound, member):
                assert post(token, "127.0.0.1")[0] == 200
                status, body = post(token, "127.0.0.2")
                assert status == 403 and json.loads(body)["error"] == "address_not_allowed"
            assert post(free, "127.0.0.2")[0] == 200
