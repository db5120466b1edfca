"""`extauthz serve` against a real redis-server, called over real gRPC as Envoy calls it."""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from extauthz.dev.local_pki import make_local_pki
from tests.support.check import CheckClient, reply_headers, upstream_headers
from tests.support.procs import REPO, RedisServer, extauthz_serve, run_cli, stop, wait_for

pytestmark = pytest.mark.redis

SECRET = "paperspace-basic-secret-value"


@pytest.fixture
def stack(
    redis_server: RedisServer, tmp_path: Path
) -> Iterator[tuple[RedisServer, CheckClient, Path]]:
    env_policy = tmp_path / "policy.yaml"
    env_policy.write_text(
        (REPO / "examples/policy.yaml")
        .read_text()
        .replace("from_env: DENSENET161_SECRET", f"from_file: {tmp_path}/secret")
    )
    (tmp_path / "secret").write_text(SECRET + "\n")
    run_cli(redis_server.url, "sync", str(env_policy))
    log = tmp_path / "serve.log"
    with extauthz_serve(redis_server.url, log) as (port, _proc):
        client = CheckClient(port)
        try:
            yield redis_server, client, log
        finally:
            client.close()


def create_token(url: str, *args: str) -> dict[str, str]:
    out = run_cli(url, "token", "create", *args, "--json").stdout
    data: dict[str, str] = json.loads(out)
    return data


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_decisions_over_grpc(stack: tuple[RedisServer, CheckClient, Path]) -> None:
    redis_server, client, log = stack
    tok = create_token(redis_server.url, "--route", "densenet161", "--scope", "inference")
    mgmt = create_token(
        redis_server.url, "--route", "densenet161-management", "--scope", "management"
    )
    a_only = create_token(redis_server.url, "--route", "deployment-a")
    bearer = f"Bearer {tok['token']}"

    assert client.status("healthz") == 200
    assert client.status("densenet161") == 401
    assert client.status("densenet161", bearer) == 200
    assert (
        client.status("densenet161", bearer.lower().replace(tok["token"].lower(), tok["token"]))
        == 200
    )
    assert client.status("densenet161", basic("paperspace", SECRET)) == 200
    assert client.status("densenet161", basic("paperspace", tok["token"])) == 200
    assert client.status("densenet161", basic("other", SECRET)) == 401
    assert client.status("densenet161", f"Bearer {mgmt['token']}") == 403
    assert client.status("densenet161-management", f"Bearer {mgmt['token']}") == 200
    assert client.status("densenet161-management", bearer) == 403
    assert client.status("deployment-a", f"Bearer {a_only['token']}") == 200
    assert client.status("deployment-b", f"Bearer {a_only['token']}") == 403
    assert client.status("embedder", bearer) == 404
    assert client.status("embedder", network="internal") == 200
    assert client.status("embedder", source="10.2.3.4") == 200
    assert client.status("no-such-route", bearer) == 404
    assert client.status(None, bearer) == 404

    resp = client.check(
        "densenet161", bearer, headers={"x-extauthz-subject": "admin", "x-extauthz-role": "root"}
    )
    assert upstream_headers(resp) == {
        "x-extauthz-subject": tok["id"],
        "x-extauthz-route": "densenet161",
        "x-extauthz-scopes": "inference",
    }
    assert set(resp.ok_response.headers_to_remove) == {"authorization", "x-extauthz-role"}

    denied = client.check("densenet161", "Bearer eat_unknown")
    assert reply_headers(denied)["www-authenticate"].startswith(
        'Bearer realm="densenet161", error="invalid_token"'
    )
    assert json.loads(denied.denied_response.body)["error"] == "unauthorized"

    logs = log.read_text()
    for secret in (tok["token"], mgmt["token"], a_only["token"], SECRET):
        assert secret not in logs
    assert f"subject={mgmt['id']}" in logs  # denials are logged with the token id


def test_revoke_rotate_expiry_take_effect_within_a_second(
    stack: tuple[RedisServer, CheckClient, Path],
) -> None:
    redis_server, client, _ = stack
    tok = create_token(redis_server.url, "--route", "deployment-a")
    assert client.status("deployment-a", f"Bearer {tok['token']}") == 200

    rotated = json.loads(run_cli(redis_server.url, "token", "rotate", tok["id"], "--json").stdout)
    assert rotated["id"] == tok["id"] and rotated["token"] != tok["token"]
    wait_for(lambda: client.status("deployment-a", f"Bearer {tok['token']}") == 401, 1, "rotation")
    assert client.status("deployment-a", f"Bearer {rotated['token']}") == 200

    run_cli(redis_server.url, "token", "revoke", tok["id"])
    wait_for(
        lambda: client.status("deployment-a", f"Bearer {rotated['token']}") == 401, 1, "revoke"
    )

    short = create_token(redis_server.url, "--route", "deployment-a", "--ttl", "1s")
    assert client.status("deployment-a", f"Bearer {short['token']}") == 200
    wait_for(lambda: client.status("deployment-a", f"Bearer {short['token']}") == 401, 3, "expiry")


def test_bad_input_never_crashes(stack: tuple[RedisServer, CheckClient, Path]) -> None:
    redis_server, client, log = stack
    digest = "f" * 64
    redis_server.cli("HSET", f"extauthz:token:{digest}", "routes", "densenet161")  # no id
    redis_server.cli("SET", "extauthz:token:" + "e" * 64, "a string, not a hash")
    cases = [
        "",
        "Bearer",
        "Bearer ",
        "eat_notoken",
        "Basic !!!",
        "Basic " + base64.b64encode(b"no-colon").decode(),
        "Bearer a, Bearer b",
        "Bearer " + "x" * 65536,
        "Bearer \u00e9t\u00e9",
        basic("paperspace", "wrong"),
    ]
    for value in cases:
        assert client.status("densenet161", value) == 401, value
    assert client.status("densenet161", "Bearer", headers={"x": "y" * 1000}) == 401
    assert client.status("healthz", "Bearer " + "x" * 65536) == 200
    # still alive and deciding correctly
    tok = create_token(redis_server.url, "--route", "densenet161", "--scope", "inference")
    assert client.status("densenet161", f"Bearer {tok['token']}") == 200
    assert "Traceback" not in log.read_text()


def test_hand_written_expired_record_is_refused(
    stack: tuple[RedisServer, CheckClient, Path],
) -> None:
    redis_server, client, _ = stack
    from extauthz.core.credentials import token_hash

    token = "eat_handmade-token-for-expiry-test-0000000000000"
    key = f"extauthz:token:{token_hash(token)}"
    redis_server.cli(
        "HSET", key, "id", "hand", "routes", "deployment-a", "expires_at", str(int(time.time()) - 5)
    )
    assert client.status("deployment-a", f"Bearer {token}") == 401
    redis_server.cli("HSET", key, "expires_at", str(int(time.time()) + 3600))
    wait_for(lambda: client.status("deployment-a", f"Bearer {token}") == 200, 1, "hand edit")


def test_redis_down_is_503_then_recovers(stack: tuple[RedisServer, CheckClient, Path]) -> None:
    redis_server, client, _ = stack
    tok = create_token(redis_server.url, "--route", "deployment-a")
    bearer = f"Bearer {tok['token']}"
    assert client.status("deployment-a", bearer) == 200
    redis_server.stop()
    # The listener sees its connection close within a few event-loop turns (a Check in those
    # turns is answered by the cache, as it was a moment before); from then on the cache is
    # bypassed and Redis, being down, fails closed.
    wait_for(
        lambda: (
            client.check("deployment-a", bearer).WhichOneof("http_response") == "error_response"
        ),
        2,
        "the cache bypassed once Redis is down",
    )
    resp = client.check("deployment-a", bearer)
    assert resp.WhichOneof("http_response") == "error_response"
    assert resp.status.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert client.status("deployment-a", bearer) == 503
    assert client.status("healthz") == 200  # needs no Redis: the cached policy answers
    assert client.status("embedder") == 404
    redis_server.start()  # same port, empty data set: the token is gone, the policy is kept
    assert client.status("deployment-a", bearer) == 401
    # (Redis lost the policy, the server keeps its copy: the route is unknown to token create)
    tok2 = create_token(redis_server.url, "--route", "deployment-a", "--allow-unknown-route")
    assert client.status("deployment-a", f"Bearer {tok2['token']}") == 200


def test_policy_change_without_restart(
    stack: tuple[RedisServer, CheckClient, Path], tmp_path: Path
) -> None:
    redis_server, client, _ = stack
    assert client.status("healthz") == 200
    changed = tmp_path / "changed.yaml"
    changed.write_text("version: 1\nroutes:\n  healthz: {access: private}\n")
    out = run_cli(redis_server.url, "sync", str(changed), "--prune").stdout
    assert "~ route healthz" in out
    wait_for(lambda: client.status("healthz") == 404, 5, "the new policy version")
    assert client.status("densenet161") == 404  # pruned


def test_health_and_graceful_shutdown(redis_server: RedisServer, tmp_path: Path) -> None:
    run_cli(
        redis_server.url,
        "sync",
        str(REPO / "examples/policy.yaml"),
        env={"DENSENET161_SECRET": SECRET},
    )
    with extauthz_serve(redis_server.url, tmp_path / "s.log") as (port, proc):
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = health_pb2_grpc.HealthStub(channel)
        for service in (
            "",
            "envoy.service.auth.v3.Authorization",
            "envoy.service.ext_proc.v3.ExternalProcessor",
        ):
            resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        channel.close()
        probe = run_cli(redis_server.url, "health", "--target", f"127.0.0.1:{port}")
        assert probe.stdout.strip() == "SERVING"
        assert stop(proc) == 0
    down = run_cli(
        redis_server.url, "health", "--target", f"127.0.0.1:{port}", "--timeout", "0.5", check=False
    )
    assert down.returncode == 1 and "health check of" in down.stderr
    assert "stopped" in (tmp_path / "s.log").read_text()


def test_health_says_which_tls_settings_the_port_needs(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    pki = make_local_pki(tmp_path / "pki")
    tls = {
        "EXTAUTHZ_TLS_CERT": str(pki.server_cert),
        "EXTAUTHZ_TLS_KEY": str(pki.server_key),
        "EXTAUTHZ_TLS_CLIENT_CA": str(pki.ca),
    }
    flags = [f"--{k[9:].lower().replace('_', '-')}={v}" for k, v in tls.items()]
    with extauthz_serve(redis_server.url, tmp_path / "tls.log", *flags) as (port, _):
        target = ("health", "--target", f"127.0.0.1:{port}")
        plain = run_cli(redis_server.url, *target, check=False)
        assert plain.returncode == 1 and plain.stdout == ""
        assert one_line(plain.stderr) == (
            f"extauthz: error: health check of 127.0.0.1:{port} failed (UNAVAILABLE): the port "
            "speaks TLS; give the probe the server's TLS settings (--tls-cert and --tls-key: a "
            "certificate its --tls-client-ca signed; --tls-client-ca or --tls-ca: the CA of its "
            "certificate; or the same --config or EXTAUTHZ_TLS_*)"
        )
        assert run_cli(redis_server.url, *target, env=tls).stdout == "SERVING\n"
        wrong = run_cli(redis_server.url, *target, "--tls-server-name", "x", env=tls, check=False)
        assert "the TLS handshake failed; check --tls-ca" in one_line(wrong.stderr)
    with extauthz_serve(redis_server.url, tmp_path / "plain.log") as (port, _):
        target = ("health", "--target", f"127.0.0.1:{port}")
        secure = run_cli(redis_server.url, *target, env=tls, check=False)
        assert secure.returncode == 1
        assert "the port does not speak TLS; probe it without --tls-cert" in one_line(secure.stderr)
    gone = run_cli(redis_server.url, *target, check=False)
    assert "nothing accepts connections there; is extauthz serve running" in one_line(gone.stderr)


def one_line(stderr: str) -> str:
    (line,) = stderr.splitlines()  # (no gRPC log lines around it)
    return line


def test_serve_reports_a_busy_port(redis_server: RedisServer, tmp_path: Path) -> None:
    with extauthz_serve(redis_server.url, tmp_path / "a.log") as (port, _):
        result = run_cli(redis_server.url, "serve", "--listen", f"127.0.0.1:{port}", check=False)
    assert result.returncode == 2
    assert "cannot listen on" in result.stderr
    assert os.linesep.join(result.stderr.strip().splitlines()[-1:]).startswith("extauthz: error:")
