"""OIDC/JWT routes: a real local IdP (discovery + JWKS over HTTP), extauthz serve, real Envoy."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from extauthz.dev.ports import free_port
from tests.support.check import CheckClient, reply_headers, upstream_headers
from tests.support.idp import AUDIENCE, LocalIdP, SigningKey, claims, hs256_with, unsigned
from tests.support.procs import REPO, RedisServer, extauthz_serve, require_binary, run_cli, wait_for

pytestmark = pytest.mark.redis


def policy(idp: LocalIdP, jwks_file: Path) -> str:
    dead = f"http://127.0.0.1:{free_port()}"
    return f"""
version: 1
routes:
  iris:
    access: protected
    credentials: [jwt]
    scopes: [predict]
    jwt:
      issuer: {idp.issuer}
      audiences: [{AUDIENCE}]
      forward_claims: {{email: x-extauthz-email}}
  keycloak-style:
    access: protected
    credentials: [jwt]
    scopes: [predict]
    jwt:
      issuer: {idp.issuer}
      jwks_uri: {idp.issuer}/jwks
      audiences: [account]
      scopes_claim: realm_access.roles
      leeway_seconds: 0
  mixed:
    access: protected
    credentials: [bearer, jwt]
    jwt: {{issuer: {idp.issuer}, audiences: [{AUDIENCE}], jwks_file: {jwks_file}}}
  idp-never-reached:
    access: protected
    credentials: [jwt]
    jwt: {{issuer: {dead}, audiences: [{AUDIENCE}]}}
"""


@pytest.fixture
def oidc(redis_server: RedisServer, tmp_path: Path) -> Iterator[tuple[LocalIdP, CheckClient, Path]]:
    with LocalIdP() as idp:
        idp.keys = [SigningKey("rsa-1"), SigningKey("ec-1", "EC")]
        jwks_file = tmp_path / "jwks.json"
        jwks_file.write_text(json.dumps({"keys": [idp.keys[0].jwk()]}))
        policy_file = tmp_path / "policy.yaml"
        policy_file.write_text(policy(idp, jwks_file))
        run_cli(redis_server.url, "sync", str(policy_file))
        log = tmp_path / "serve.log"
        with extauthz_serve(
            redis_server.url, log, "--jwks-refresh", "60", "--jwks-min-refetch", "0.5"
        ) as (port, _):
            client = CheckClient(port)
            yield idp, client, log
            client.close()


def test_the_first_checks_after_a_start_find_the_keys(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A server serves once its policy's key sets have been fetched once: an IdP slower
    than a request's wait for keys (0.1 s) does not turn its first requests into 503s."""
    with LocalIdP() as idp:
        idp.keys = [SigningKey("rsa-1")]
        idp.delay = 0.4  # (discovery, then the key set: 0.8 s)
        policy_file = tmp_path / "policy.yaml"
        policy_file.write_text(policy(idp, tmp_path / "none.json"))
        run_cli(redis_server.url, "sync", str(policy_file))
        token = bearer(idp.keys[0].sign(claims(idp.issuer)))
        with extauthz_serve(redis_server.url, tmp_path / "serve.log") as (port, _):
            client = CheckClient(port)
            try:
                assert client.status("iris", token) == 200
            finally:
                client.close()
        assert "JWKS not fetched yet" not in (tmp_path / "serve.log").read_text()


def test_an_idp_that_never_answers_holds_a_start_a_few_seconds_only(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The wait for the first key sets is bounded (the fetch timeout, 3 s, and a little):
    then the server serves, says which key sets it still waits for, and their routes
    answer 503, never 401 or 200."""
    with LocalIdP() as idp:
        idp.keys = [SigningKey("rsa-1")]
        idp.delay = 30
        policy_file = tmp_path / "policy.yaml"
        policy_file.write_text(policy(idp, tmp_path / "none.json"))
        run_cli(redis_server.url, "sync", str(policy_file))
        started = time.monotonic()
        with extauthz_serve(redis_server.url, tmp_path / "serve.log") as (port, _):
            assert time.monotonic() - started < 10
            client = CheckClient(port)
            try:
                assert client.status("iris", bearer(idp.keys[0].sign(claims(idp.issuer)))) == 503
            finally:
                client.close()
            log = (tmp_path / "serve.log").read_text()
        assert f"JWKS not fetched yet from {idp.issuer}" in log
        idp.delay = 0  # (its handler threads end)


def bearer(token: str) -> str:
    return f"Bearer {token}"


def test_valid_and_invalid_tokens(oidc: tuple[LocalIdP, CheckClient, Path]) -> None:
    idp, client, log = oidc
    rsa, ec = idp.keys
    good = rsa.sign(claims(idp.issuer, email="alice@example.com"))
    resp = client.check("iris", bearer(good), headers={"x-extauthz-email": "spoofed"})
    assert resp.status.code == 0
    assert upstream_headers(resp) == {
        "x-extauthz-subject": f"jwt:{idp.issuer}:user-1",  # namespaced: never a token id
        "x-extauthz-route": "iris",
        "x-extauthz-scopes": "openid,predict",
        "x-extauthz-email": "alice@example.com",
    }
    assert client.status("iris", bearer(ec.sign(claims(idp.issuer)))) == 200
    assert client.status("iris", bearer(rsa.sign(claims(idp.issuer, scope="openid")))) == 403

    now = int(time.time())
    payload = claims(idp.issuer)
    bad = {
        "expired": rsa.sign(claims(idp.issuer, exp=now - 60)),
        "not yet valid": rsa.sign(claims(idp.issuer, nbf=now + 600)),
        "wrong issuer": rsa.sign(claims("https://evil.example.com")),
        "wrong audience": rsa.sign(claims(idp.issuer, aud="other")),
        "bad signature": SigningKey("rsa-1").sign(payload),
        "alg none": unsigned({"alg": "none", "kid": "rsa-1"}, payload),
        "hs256 with public key": hs256_with(
            rsa.public_pem(), {"alg": "HS256", "kid": "rsa-1"}, payload
        ),
        "garbage": "eyJhbGciOiJSUzI1NiJ9.garbage.garbage",
    }
    for name, token in bad.items():
        resp = client.check("iris", bearer(token))
        assert resp.WhichOneof("http_response") == "denied_response", name
        assert resp.denied_response.status.code == 401, name
        challenge = reply_headers(resp)["www-authenticate"]
        assert challenge.startswith(
            'Bearer realm="iris", error="invalid_token", error_description="'
        ), name
        assert token not in challenge and token.split(".")[1] not in challenge
    logs = log.read_text()
    assert good not in logs and f"subject=jwt:{idp.issuer}:user-1" in logs


def test_claim_paths_and_mixed_routes(
    oidc: tuple[LocalIdP, CheckClient, Path], redis_server: RedisServer
) -> None:
    idp, client, _ = oidc
    rsa = idp.keys[0]
    keycloak = rsa.sign(claims(idp.issuer, aud="account", realm_access={"roles": ["predict"]}))
    assert client.status("keycloak-style", bearer(keycloak)) == 200
    assert (
        client.status(
            "keycloak-style",
            bearer(rsa.sign(claims(idp.issuer, aud="account", realm_access={"roles": []}))),
        )
        == 403
    )
    assert client.status("mixed", bearer(rsa.sign(claims(idp.issuer)))) == 200  # from jwks_file
    opaque = json.loads(
        run_cli(redis_server.url, "token", "create", "--route", "mixed", "--json").stdout
    )
    assert client.status("mixed", bearer(opaque["token"])) == 200
    assert client.status("mixed", "Bearer eat_unknown") == 401


def test_key_rotation_without_restart(oidc: tuple[LocalIdP, CheckClient, Path]) -> None:
    idp, client, _ = oidc
    new_key = SigningKey("rsa-2")
    token = new_key.sign(claims(idp.issuer))
    time.sleep(0.6)  # past --jwks-min-refetch since the initial fetch
    before = idp.jwks_requests
    assert client.status("iris", bearer(token)) == 401  # unknown kid, refetched, still unknown
    assert idp.jwks_requests == before + 1
    for _ in range(5):  # refetches are rate-limited: no storm of JWKS requests
        assert client.status("iris", bearer(token)) == 401
    assert idp.jwks_requests <= before + 2
    idp.keys.append(new_key)
    wait_for(lambda: client.status("iris", bearer(token)) == 200, 5, "the rotated key")


def test_idp_down(oidc: tuple[LocalIdP, CheckClient, Path]) -> None:
    idp, client, _ = oidc
    rsa = idp.keys[0]
    assert client.status("iris", bearer(rsa.sign(claims(idp.issuer)))) == 200
    idp.up = False
    # cached keys keep working for new tokens; unknown kids are refused, quickly
    assert client.status("iris", bearer(rsa.sign(claims(idp.issuer, sub="user-2")))) == 200
    unknown = bearer(SigningKey("rsa-9").sign(claims(idp.issuer)))  # (a new RSA key: slow)
    started = time.monotonic()
    assert client.status("iris", unknown) == 401
    # (KEY_WAIT, 0.1 s, not the 3 s fetch timeout; a loaded 2-core machine adds a little)
    assert time.monotonic() - started < 1.0
    # a route whose IdP was never reached cannot decide: 503, never 401 or 200
    resp = client.check("idp-never-reached", bearer(rsa.sign(claims(idp.issuer))))
    assert resp.WhichOneof("http_response") == "error_response"
    assert client.status("idp-never-reached", bearer(rsa.sign(claims(idp.issuer)))) == 503
    assert client.status("idp-never-reached") == 401  # no credential: nothing to verify


@pytest.mark.envoy
def test_jwt_through_envoy(tmp_path: Path) -> None:
    from extauthz.dev.stack import Stack, free_base_port

    require_binary("envoy")
    with LocalIdP() as idp:
        idp.keys = [SigningKey("rsa-1")]
        text = (REPO / "examples/policy.yaml").read_text()
        text = text.replace(
            "  deployment-b:\n    access: protected\n",
            f"  deployment-b:\n    access: protected\n    credentials: [jwt]\n    jwt:\n"
            f"      issuer: {idp.issuer}\n      audiences: [{AUDIENCE}]\n",
        )
        assert "credentials: [jwt]" in text
        policy_file = tmp_path / "policy.yaml"
        policy_file.write_text(text)
        stack = Stack(free_base_port(), tmp_path / "stack", policy_file)
        stack.start()
        try:
            url = f"{stack.external_url}/deployments/b/predict"
            token = idp.keys[0].sign(claims(idp.issuer, sub="svc-account"))
            req = urllib.request.Request(
                url, method="POST", headers={"Authorization": bearer(token)}
            )
            with urllib.request.urlopen(req, timeout=10) as resp:
                seen = json.loads(resp.read())["headers"]
            assert seen["x-extauthz-subject"] == f"jwt:{idp.issuer}:svc-account"
            assert "authorization" not in seen
            expired = idp.keys[0].sign(claims(idp.issuer, exp=int(time.time()) - 600))
            req = urllib.request.Request(
                url, method="POST", headers={"Authorization": bearer(expired)}
            )
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(req, timeout=10)
            assert info.value.code == 401
            assert 'error_description="token expired"' in info.value.headers["www-authenticate"]
        finally:
            stack.stop()
