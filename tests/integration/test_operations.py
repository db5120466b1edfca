"""Operations: Prometheus metrics, health after a Redis outage, --disable-auth, JSON logs."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from extauthz.dev.ports import free_port
from tests.support.check import CheckClient, upstream_headers
from tests.support.metrics import metric, scrape
from tests.support.procs import REPO, RedisServer, extauthz_serve, run_cli, wait_for

pytestmark = pytest.mark.redis

ENV = {"DENSENET161_SECRET": "basic-secret-for-ops-tests"}


def health(port: int, service: str = "") -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        request = health_pb2.HealthCheckRequest(service=service)
        resp = health_pb2_grpc.HealthStub(channel).Check(request, timeout=2)
        return int(resp.status)


def test_metrics(redis_server: RedisServer, tmp_path: Path) -> None:
    run_cli(redis_server.url, "sync", str(REPO / "examples/policy.yaml"), env=ENV)
    tok = json.loads(
        run_cli(redis_server.url, "token", "create", "--route", "deployment-a", "--json").stdout
    )
    mport = free_port()
    with extauthz_serve(
        redis_server.url, tmp_path / "s.log", "--metrics-listen", f"127.0.0.1:{mport}"
    ) as (port, _):
        client = CheckClient(port)
        # only once subscribed is the cache trusted: then the counts below are exact
        wait_for(lambda: "channel subscribed" in (tmp_path / "s.log").read_text(), 5, "listener")
        for _ in range(3):
            assert client.status("deployment-a", f"Bearer {tok['token']}") == 200
        assert client.status("deployment-a") == 401
        assert client.status("no-such-route") == 404
        text = scrape(mport)
        client.close()
    assert (
        metric(
            text,
            "extauthz_decisions_total",
            route="deployment-a",
            outcome="allow",
            reason="granted",
        )
        == 3
    )
    assert (
        metric(
            text,
            "extauthz_decisions_total",
            route="deployment-a",
            outcome="deny",
            reason="no_credential",
        )
        == 1
    )
    assert (
        metric(text, "extauthz_decisions_total", route="-", outcome="deny", reason="unknown_route")
        == 1
    )
    assert metric(text, "extauthz_decision_seconds_count") == 5
    assert metric(text, "extauthz_policy_version") == 1
    assert metric(text, "extauthz_redis_seconds_count", command="hgetall") == 1  # one miss
    assert metric(text, "extauthz_redis_seconds_count", command="hmget") >= 1  # policy polls
    assert metric(text, "extauthz_redis_up") == 1
    assert metric(text, "extauthz_auth_disabled") == 0
    # the repeats were answered by the decision memo, before the token cache
    assert metric(text, "extauthz_token_cache_events_total", event="decision_reused") == 2
    assert metric(text, "extauthz_token_cache_events_total", event="hit") == 0
    assert metric(text, "extauthz_token_cache_events_total", event="miss") == 1
    assert tok["token"] not in text


def test_health_follows_a_redis_outage(redis_server: RedisServer, tmp_path: Path) -> None:
    run_cli(redis_server.url, "sync", str(REPO / "examples/policy.yaml"), env=ENV)
    mport = free_port()
    args = ("--unhealthy-after", "1", "--metrics-listen", f"127.0.0.1:{mport}")
    with extauthz_serve(redis_server.url, tmp_path / "s.log", *args) as (port, _):
        serving, not_serving = (
            health_pb2.HealthCheckResponse.SERVING,
            health_pb2.HealthCheckResponse.NOT_SERVING,
        )
        assert health(port) == serving
        redis_server.stop()
        client = CheckClient(port)
        assert client.status("deployment-a", "Bearer eat_whatever") == 503
        wait_for(lambda: health(port) == not_serving, 4, "NOT_SERVING")
        assert health(port, "envoy.service.auth.v3.Authorization") == not_serving
        assert health(port, "extauthz.liveness") == serving  # unready, never restarted
        text = scrape(mport)
        assert metric(text, "extauthz_redis_up") == 0 and metric(text, "extauthz_serving") == 0
        assert metric(text, "extauthz_redis_errors_total") >= 1
        redis_server.start()
        wait_for(lambda: health(port) == serving, 2.0, "SERVING again within 2 s")
        client.close()


def test_disable_auth(redis_server: RedisServer, tmp_path: Path) -> None:
    run_cli(redis_server.url, "sync", str(REPO / "examples/policy.yaml"), env=ENV)
    log = tmp_path / "s.log"
    mport = free_port()
    with extauthz_serve(
        redis_server.url, log, "--disable-auth", "--metrics-listen", f"127.0.0.1:{mport}"
    ) as (port, _):
        client = CheckClient(port)
        resp = client.check(
            "densenet161", "Bearer eat_anything", headers={"x-extauthz-subject": "admin"}
        )
        assert resp.status.code == 0
        assert upstream_headers(resp)["x-extauthz-subject"] == "auth-disabled"
        assert "authorization" in resp.ok_response.headers_to_remove
        assert metric(scrape(mport), "extauthz_auth_disabled") == 1
        client.close()
    assert "AUTHENTICATION IS DISABLED" in log.read_text()


def test_json_logs_never_contain_secrets(redis_server: RedisServer, tmp_path: Path) -> None:
    run_cli(redis_server.url, "sync", str(REPO / "examples/policy.yaml"), env=ENV)
    tok = json.loads(
        run_cli(redis_server.url, "token", "create", "--route", "deployment-a", "--json").stdout
    )
    log = tmp_path / "s.log"
    secrets = [
        tok["token"],
        "eat_unknown-token-value-123456",
        ENV["DENSENET161_SECRET"],
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl",
    ]
    with extauthz_serve(redis_server.url, log, "--log-format", "json") as (port, _):
        client = CheckClient(port)
        client.status("deployment-a", f"Bearer {tok['token']}")
        client.status("deployment-b", f"Bearer {tok['token']}")
        client.status("deployment-a", f"Bearer {secrets[1]}")
        basic = base64.b64encode(f"paperspace:{ENV['DENSENET161_SECRET']}".encode()).decode()
        client.status("densenet161", f"Basic {basic}")
        client.status(
            "densenet161", f"Basic {base64.b64encode(b'paperspace:wrong-password').decode()}"
        )
        client.status("densenet161", f"Bearer {secrets[3]}")
        client.close()
    text = log.read_text()
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    denials = [r for r in records if r.get("outcome") == "deny"]
    assert len(denials) >= 3 and all(
        {"route", "status", "reason", "subject"} <= r.keys() for r in denials
    )
    for secret in [*secrets, basic]:
        assert secret not in text
    assert not re.search(r"[Bb]earer [A-Za-z0-9]", text)


def test_the_compose_certificates_give_mutual_tls(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """What docker-compose runs (docs/security.md#security-model, mutual TLS): `extauthz
    certs`, then `serve` and its health check with the TLS settings from the environment. A
    client without Envoy's certificate gets no answer; one that serves TLS without a client CA
    is warned about."""
    certs = tmp_path / "certs"

    def make() -> str:
        command = [sys.executable, "-m", "extauthz", "certs", str(certs)]
        return subprocess.run(command, check=True, capture_output=True, text=True).stdout

    assert "envoy.key" in make() and "kept" in make()
    tls = (
        "--tls-cert", str(certs / "extauthz.crt"), "--tls-key", str(certs / "extauthz.key"),
        "--tls-client-ca", str(certs / "ca.crt"),
    )  # fmt: skip
    with extauthz_serve(redis_server.url, tmp_path / "s.log", *tls) as (port, _):
        health = run_cli(
            redis_server.url, "health", "--target", f"127.0.0.1:{port}", *tls, check=False
        )
        assert health.returncode == 0, health.stderr
        plain = run_cli(redis_server.url, "health", "--target", f"127.0.0.1:{port}", check=False)
        assert plain.returncode != 0
    with extauthz_serve(redis_server.url, tmp_path / "w.log", *tls[:4]) as (port, _):
        pass
    assert "without --tls-client-ca" in (tmp_path / "w.log").read_text()
