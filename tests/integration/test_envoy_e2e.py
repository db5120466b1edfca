"""The seed scenarios, end to end: real Envoy binary → extauthz → real redis-server → model."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import grpc
import pytest

from extauthz.admin import tokens
from extauthz.config import Settings
from extauthz.core.rate_limit import RateLimit
from extauthz.dev import PORTS_USED, demo_model
from extauthz.dev.envoy_config import (
    COMPOSE,
    COMPOSE_TLS,
    EXTAUTHZ_RENEW_AFTER,
    ClientTls,
    loopback_ports,
    render,
    sds_files,
)
from extauthz.dev.local_pki import make_local_pki
from extauthz.dev.ports import port_open
from extauthz.dev.stack import Stack, free_base_port
from tests.support.procs import REPO, local_stack, require_binary, wait_for
from tests.support.readme import readme_block

pytestmark = [pytest.mark.redis, pytest.mark.envoy]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # the tests of this module send many 401s from 127.0.0.1: a burst that they cannot exhaust
    with local_stack(tmp_path_factory.mktemp("stack"), Settings(auth_failure_burst=100000)) as s:
        yield s


Response = tuple[int, dict[str, str], str]


def http(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> Response:
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return (
                resp.status,
                {k.lower(): v for k, v in resp.headers.items()},
                resp.read().decode(),
            )
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read().decode()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def mint(
    stack: Stack, routes: list[str], scopes: Sequence[str] = (), ttl: int | None = None
) -> str:
    return tokens.create(stack.store(), routes, scopes, ttl_seconds=ttl, now=time.time()).token


def basic(user: str, password: str) -> dict[str, str]:
    import base64

    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_hosted_notebook_basic_auth(stack: Stack) -> None:
    url = f"{stack.external_url}/predictions/densenet161"
    assert http(url, "POST", basic("paperspace", stack.basic_secret))[0] == 200
    for headers in (basic("paperspace", "wrong-secret"), basic("someone", stack.basic_secret), {}):
        status, resp_headers, body = http(url, "POST", headers)
        assert status == 401
        assert 'Basic realm="densenet161"' in resp_headers["www-authenticate"]
        assert json.loads(body)["error"] == "unauthorized"
        assert stack.basic_secret not in body + json.dumps(resp_headers)


def test_model_server_scopes_rotation_expiry(stack: Stack) -> None:
    inference = mint(stack, ["densenet161"], ["inference"])
    management = mint(stack, ["densenet161-management"], ["management"])
    ext = stack.external_url
    assert http(f"{ext}/predictions/densenet161", "POST", bearer(inference))[0] == 200
    assert http(f"{ext}/models", "GET", bearer(inference))[0] == 403
    assert http(f"{ext}/models", "GET", bearer(management))[0] == 200

    rotated = tokens.rotate(stack.store(), _id_of(stack, inference)).token
    wait_for(
        lambda: http(f"{ext}/predictions/densenet161", "POST", bearer(inference))[0] == 401,
        1,
        "rotation",
    )
    assert http(f"{ext}/predictions/densenet161", "POST", bearer(rotated))[0] == 200

    short = mint(stack, ["densenet161"], ["inference"], ttl=1)
    assert http(f"{ext}/predictions/densenet161", "POST", bearer(short))[0] == 200
    wait_for(
        lambda: http(f"{ext}/predictions/densenet161", "POST", bearer(short))[0] == 401, 4, "expiry"
    )
    _, headers, _ = http(f"{ext}/predictions/densenet161", "POST", bearer(short))
    assert 'error="invalid_token"' in headers["www-authenticate"]


def _id_of(stack: Stack, token: str) -> str:
    from extauthz.core.credentials import token_hash

    record = stack.store().token_record(token_hash(token))
    assert record is not None
    return record.id


def test_deployment_platform(stack: Stack) -> None:
    a_token = mint(stack, ["deployment-a"])
    ext, internal = stack.external_url, stack.internal_url
    assert http(f"{ext}/deployments/a/predict", "POST", bearer(a_token))[0] == 200
    assert http(f"{ext}/deployments/b/predict", "POST", bearer(a_token))[0] == 403
    status, _, body = http(f"{ext}/embedder/embed", "POST", bearer(a_token))
    unknown = http(f"{ext}/no/such/thing", "POST", bearer(a_token))
    # a private route seen from outside answers exactly as a route that does not exist
    # (but for the request's own id)
    private, missing = json.loads(body), json.loads(unknown[2])
    assert private.pop("request_id") != missing.pop("request_id")
    assert (status, private) == (unknown[0], missing) == (404, private)
    assert http(f"{internal}/embedder/embed", "POST")[0] == 200
    assert http(f"{ext}/ping")[0] == 200
    # Envoy names a route the policy does not have (retired-model): 404, whatever the token
    everything = mint(stack, ["*"], ["inference", "management"])
    assert http(f"{ext}/retired/predict", "POST", bearer(everything))[0] == 404


def test_identity_headers_spelled_with_underscores_never_reach_the_model(stack: Stack) -> None:
    # WSGI/CGI servers fold `_` into `-`: any header name with `_` is dropped at the edge
    token = mint(stack, ["deployment-a"])
    spoofs = {
        "x_extauthz_subject": "admin",
        "x_extauthz_scopes": "management",
        "X_Extauthz_Route": "deployment-b",
        "x-extauthz_subject": "admin",
        "authorization_": "Bearer x",
        "x_forwarded_for": "10.0.0.1",
    }
    for url, headers in (
        (f"{stack.external_url}/deployments/a/predict", {**bearer(token), **spoofs}),
        (f"{stack.external_url}/ping", spoofs),
        (f"{stack.internal_url}/embedder/embed", spoofs),
    ):
        status, _, body = http(url, "POST", headers)
        assert status == 200, url
        seen = json.loads(body)["headers"]
        assert not [name for name in seen if "_" in name], seen


@pytest.mark.parametrize(
    ("path", "canonical"),
    [
        ("/deployments/a/%2e%2e/b/predict", "/deployments/b/predict"),
        ("/deployments/a/%2E%2E/b/predict", "/deployments/b/predict"),
        ("/deployments/a/.%2e/b/predict", "/deployments/b/predict"),
        ("/deployments/a/../b/predict", "/deployments/b/predict"),
        ("/deployments/a/./../b/predict", "/deployments/b/predict"),
        ("/deployments/a/x/../../b/predict", "/deployments/b/predict"),
        ("/deployments/a/%2e%2e/%2e%2e/deployments/b/predict", "/deployments/b/predict"),
        ("/deployments/a/%2e/predict", "/deployments/a/predict"),
        ("/deployments/a//../b/predict", "/deployments/a/b/predict"),  # RFC 3986: a/ + ..
        ("/deployments/b/../a/predict", "/deployments/a/predict"),
    ],
)
def test_dot_segments_are_resolved_before_the_route_is_chosen(
    stack: Stack, path: str, canonical: str
) -> None:
    # The route is chosen on the resolved path, and that path is what the model receives:
    # no upstream can resolve it to another deployment than the one that was authorized.
    deployment = canonical.split("/")[2]
    for granted in ("a", "b"):
        token = mint(stack, [f"deployment-{granted}"])
        status, _, body = http(stack.external_url + path, "POST", bearer(token))
        if granted != deployment:
            assert status == 403, (path, granted)
        else:
            assert status == 200, (path, granted)
            assert json.loads(body)["path"] == canonical


@pytest.mark.parametrize(
    "path",
    [
        "/deployments/a/..%2fb/predict",
        "/deployments/a/..%2Fb/predict",
        "/deployments/a/%2e%2e%2fb/predict",
        "/deployments/a/..%5cb/predict",
        "/deployments/a/..%5Cb/predict",
    ],
)
def test_escaped_slashes_are_refused(stack: Stack, path: str) -> None:
    a_token = mint(stack, ["deployment-a"])
    assert http(stack.external_url + path, "POST", bearer(a_token))[0] == 400


def test_repeated_slashes_are_merged(stack: Stack) -> None:
    a_token = mint(stack, ["deployment-a"])
    status, _, body = http(
        f"{stack.external_url}//deployments//a///predict", "POST", bearer(a_token)
    )
    assert status == 200
    assert json.loads(body)["path"] == "/deployments/a/predict"


def test_grpc_through_envoy(stack: Stack) -> None:
    target = f"127.0.0.1:{stack.ports.external.port}"
    inference = mint(stack, ["densenet161"], ["inference"])
    management = mint(stack, ["densenet161-management", "densenet161"], ["management"])
    reply = demo_model.call(target, inference)
    assert reply["metadata"]["x-extauthz-route"] == "densenet161"
    assert "authorization" not in reply["metadata"]
    for token, code in (
        (None, grpc.StatusCode.UNAUTHENTICATED),
        (management, grpc.StatusCode.PERMISSION_DENIED),
    ):
        with pytest.raises(grpc.RpcError) as info:
            demo_model.call(target, token)
        assert info.value.code() == code


def test_model_sees_identity_never_credentials(stack: Stack) -> None:
    token = mint(stack, ["densenet161"], ["inference"])
    headers = {
        **bearer(token),
        "x-extauthz-subject": "admin",
        "x-extauthz-scopes": "management",
        "x-extauthz-extra": "1",
    }
    status, _, body = http(f"{stack.external_url}/predictions/densenet161", "POST", headers)
    assert status == 200
    seen = json.loads(body)["headers"]
    assert "authorization" not in seen
    assert "x-extauthz-extra" not in seen
    assert seen["x-extauthz-subject"] == _id_of(stack, token)
    assert seen["x-extauthz-route"] == "densenet161"
    assert seen["x-extauthz-scopes"] == "inference"
    public = json.loads(
        http(f"{stack.external_url}/deployments/a/x", "GET", bearer(mint(stack, ["deployment-a"])))[
            2
        ]
    )
    assert public["headers"]["x-extauthz-scopes"] == ""  # set empty, not left to the client


def test_redis_stopped_means_503_then_recovery(stack: Stack) -> None:
    token = mint(stack, ["deployment-a"])
    url = f"{stack.external_url}/deployments/a/predict"
    assert http(url, "POST", bearer(token))[0] == 200
    stack.redis.stop()  # saves its data set on the way down
    try:
        for _ in range(5):
            assert http(url, "POST", bearer(token))[0] == 503
        assert http(f"{stack.external_url}/ping")[0] == 200  # public: the cached policy decides
    finally:
        stack.start_redis()
    wait_for(lambda: http(url, "POST", bearer(token))[0] == 200, 5, "recovery after Redis restart")


def test_envoy_configs_validate(tmp_path: Path) -> None:
    envoy = require_binary("envoy")
    committed = (REPO / "envoy/envoy.yaml").read_text()
    assert committed == render(COMPOSE, COMPOSE_TLS), (
        "regenerate: python -m extauthz.dev.envoy_config --compose > envoy/envoy.yaml"
    )
    # a template people copy: no YAML anchors or aliases, a comment on what matters
    assert not re.search(r"[&*]id\d+", committed)
    for setting in (
        "failure_mode_allow",
        "status_on_error",
        "allowed_headers",
        "context_extensions",
    ):
        before = committed.split(f"{setting}:")[0].rstrip().splitlines()[-1].strip()
        assert before.startswith("#"), setting
    local = tmp_path / "local.yaml"
    local.write_text(render(loopback_ports(20000)))
    pki = make_local_pki(tmp_path / "tls")
    mutual = tmp_path / "mutual-tls.yaml"
    sds = tmp_path / "sds"
    sds.mkdir()
    client_tls = ClientTls(
        str(pki.ca), str(pki.client_cert), str(pki.client_key), "extauthz", str(sds)
    )
    for name, text in sds_files(client_tls).items():
        (sds / name).write_text(text)
    mutual.write_text(render(loopback_ports(20000), client_tls))
    # the committed files, with their paths (compose mounts) pointed at real files
    shipped = tmp_path / "shipped.yaml"
    shipped_sds = tmp_path / "shipped-sds"
    shipped_sds.mkdir()
    for path in (REPO / "envoy/sds").iterdir():
        text = path.read_text().replace("/etc/envoy/certs", str(pki.ca.parent))
        (shipped_sds / path.name).write_text(text)
    shipped.write_text(
        committed.replace("/etc/envoy/certs/", f"{pki.ca.parent}/").replace(
            "/etc/envoy/sds", str(shipped_sds)
        )
    )
    for config in (shipped, local, mutual):
        result = subprocess.run(
            [envoy, "--mode", "validate", "-c", str(config), "--use-dynamic-base-id"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr[-2000:]
    broken = tmp_path / "broken.yaml"
    broken.write_text(committed.replace("status_on_error", "status_on_eror"))
    result = subprocess.run(
        [envoy, "--mode", "validate", "-c", str(broken), "--use-dynamic-base-id"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0


def test_extauthz_up_command(tmp_path: Path) -> None:
    require_binary("redis-server")
    require_binary("envoy")
    base = free_base_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "extauthz",
            "up",
            "--base-port",
            str(base),
            "--state-dir",
            str(tmp_path / "st"),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("Policy:"):
            break
    banner = "".join(lines)
    assert "extauthz local stack is up" in banner, banner
    exports = "\n".join(line.strip() for line in lines if line.strip().startswith("export "))
    assert exports.count("export ") == 6
    assert f"Console  http://127.0.0.1:{base + 8}/" in banner
    # every printed curl command, run as printed, answers the status its comment promises
    curls = [line.strip() for line in lines if line.strip().startswith("curl ")]
    assert len(curls) >= 10
    for line in curls:
        command, _, comment = line.partition("#")
        quiet = command.replace("curl -i", "curl -s -o /dev/null -w '%{http_code}'")
        out = subprocess.run(
            ["bash", "-c", f"{exports}\n{quiet}"], capture_output=True, text=True, check=False
        )
        assert out.stdout == comment.split()[-1], (line, out.stdout, out.stderr)
    # the printed OpenAI snippet, run as printed: one model answers, the other is refused
    snippet = banner.split("<<'EOF'\n", 1)[1].split("\nEOF\n", 1)[0]
    out = subprocess.run(
        ["bash", "-c", f"{exports}\n{sys.executable} - <<'EOF'\n{snippet}\nEOF"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.stdout == "demo-small heard 1 words\n403 model_not_allowed\n", out.stderr

    # a second `extauthz up` never touches the running stack: refused in one line before it
    # writes anything (its CA, its logs, its policy's Basic secret all stay)
    state = tmp_path / "st"
    kept = {p: p.read_bytes() for p in (state / "tls").iterdir()}
    logs = {p: p.stat().st_size for p in state.glob("*.log")}
    for extra, expected in (
        (("--state-dir", str(state)), f"runs from {state}: stop it first"),
        (("--state-dir", str(tmp_path / "second")), f"port {base} (Envoy's external listener"),
    ):
        again = subprocess.run(
            [sys.executable, "-m", "extauthz", "up", "--base-port", str(base), *extra],
            cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert again.returncode == 1 and again.stdout == "", again
        assert again.stderr.count("\n") == 1 and expected in again.stderr, again.stderr
        assert "--base-port" in again.stderr or "--state-dir" in again.stderr
    assert not (tmp_path / "second").exists()
    assert {p: p.read_bytes() for p in (state / "tls").iterdir()} == kept
    assert all(p.stat().st_size >= size for p, size in logs.items())
    basic = next(line for line in curls if "-u paperspace:$BASIC_PASSWORD" in line)
    quiet_curl = "curl -s -o /dev/null -w '%{http_code}'"
    out = subprocess.run(
        ["bash", "-c", f"{exports}\n{basic.partition('#')[0].replace('curl -i', quiet_curl)}"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.stdout == "200", (basic, out)

    proc.send_signal(signal.SIGINT)
    assert proc.wait(20) == 0
    assert all(not port_open(base + i) for i in range(PORTS_USED))


def test_readme_seed_scenarios(stack: Stack) -> None:
    block = readme_block("seed-scenarios")
    demo = stack.mint_demo_tokens()
    exports = {
        "INFERENCE": demo["inference"].token,
        "MANAGEMENT": demo["management"].token,
        "DEPLOYMENT_A": demo["deployment-a"].token,
        "BASIC_PASSWORD": stack.basic_secret,
        "PATH": "/usr/bin:/bin",
    }
    lines = [line for line in block.splitlines() if line.startswith("curl ")]
    assert len(lines) >= 10
    for line in lines:
        command, _, comment = line.partition("#")
        command = command.replace("127.0.0.1:10000", f"127.0.0.1:{stack.ports.external.port}")
        command = command.replace("127.0.0.1:10001", f"127.0.0.1:{stack.ports.internal.port}")
        expected = re.search(r"\d{3}", comment)
        assert expected, line
        out = subprocess.run(
            ["bash", "-c", command], capture_output=True, text=True, env=exports, check=False
        )
        assert out.stdout.strip() == expected.group(0), (line, out.stdout, out.stderr)


def test_readme_demo_grpc_block(stack: Stack) -> None:
    """The README's echo and gRPC calls, in an activated virtualenv: `python` is the one
    whose bin directory holds `extauthz` (PATH as `. .venv/bin/activate` sets it)."""
    demo = stack.mint_demo_tokens()
    env = {
        "INFERENCE": demo["inference"].token,
        "MANAGEMENT": demo["management"].token,
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "PYTHONPATH": str(REPO),  # this checkout's code, wherever .venv was made
    }
    lines = [line for line in readme_block("demo-grpc").splitlines() if line.strip()]
    assert len(lines) == 4
    for written in lines:
        line = written.replace("127.0.0.1:10000", f"127.0.0.1:{stack.ports.external.port}")
        command, _, comment = line.partition("#")
        out = subprocess.run(
            ["bash", "-c", command], capture_output=True, text=True, env=env, check=False
        )
        if command.startswith("curl "):  # the demo server's echo of what reached it
            echoed = {k.lower(): v for k, v in json.loads(out.stdout)["headers"].items()}
            assert echoed["x-extauthz-subject"] == demo["inference"].record.id, out.stdout
            assert "authorization" not in echoed
        elif comment.strip() == "OK":
            assert out.returncode == 0 and json.loads(out.stdout), (line, out.stderr)
        else:
            assert out.returncode != 0, line
            assert out.stderr.startswith(comment.strip() + ":"), (line, out.stderr)


def test_the_check_port_answers_only_envoys_certificate(stack: Stack, tmp_path: Path) -> None:
    # the local stack runs Envoy → extauthz over mutual TLS (every test above went through it)
    assert "mutual TLS" in stack.extauthz.log.read_text()
    from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc

    target = f"127.0.0.1:{stack.ports.extauthz.port}"
    pki = stack.pki
    stranger = make_local_pki(tmp_path / "other", ca_name="another CA")
    request = external_auth_pb2.CheckRequest()
    request.attributes.context_extensions["route"] = "deployment-a"
    request.attributes.context_extensions["network"] = "internal"

    def check(channel: grpc.Channel) -> grpc.StatusCode:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        try:
            stub.Check(request, timeout=3)
        except grpc.RpcError as e:
            return e.code()
        finally:
            channel.close()
        return grpc.StatusCode.OK

    def tls(ca: Path, cert: Path | None, key: Path | None) -> grpc.Channel:
        credentials = grpc.ssl_channel_credentials(
            ca.read_bytes(),
            key.read_bytes() if key else None,
            cert.read_bytes() if cert else None,
        )
        return grpc.secure_channel(
            target, credentials, options=[("grpc.ssl_target_name_override", "extauthz")]
        )

    assert check(grpc.insecure_channel(target)) == grpc.StatusCode.UNAVAILABLE
    assert check(tls(pki.ca, None, None)) == grpc.StatusCode.UNAVAILABLE
    assert (
        check(tls(pki.ca, stranger.client_cert, stranger.client_key)) == grpc.StatusCode.UNAVAILABLE
    )
    assert check(tls(pki.ca, pki.client_cert, pki.client_key)) == grpc.StatusCode.OK

    # the health probe speaks TLS with the same settings as the server
    env = {
        **os.environ,
        "EXTAUTHZ_TLS_CERT": str(pki.server_cert),
        "EXTAUTHZ_TLS_KEY": str(pki.server_key),
        "EXTAUTHZ_TLS_CLIENT_CA": str(pki.ca),
    }
    probe = subprocess.run(
        [sys.executable, "-m", "extauthz", "health", "--target", target],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert (probe.returncode, probe.stdout.strip()) == (0, "SERVING"), probe.stderr
    plain = subprocess.run(
        [sys.executable, "-m", "extauthz", "health", "--target", target],
        capture_output=True,
        text=True,
        check=False,
    )
    assert plain.returncode == 1


def test_access_log_names_the_caller_and_denials_carry_the_request_id(stack: Stack) -> None:
    issued = tokens.create(
        stack.store(), ["densenet161"], ["inference"], name="notebook 7", now=time.time()
    )
    url = f"{stack.external_url}/predictions/densenet161"
    assert http(url, "POST", bearer(issued.token))[0] == 200
    status, _, body = http(url, "POST", bearer("eat_not-a-token"))
    assert status == 401
    request_id = json.loads(body)["request_id"]
    assert request_id

    def logged() -> list[dict[str, Any]]:
        lines = stack.envoy.log.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    wait_for(lambda: any(e["request_id"] == request_id for e in logged()), 5, "access log")
    allowed = [e for e in logged() if e.get("token_name") == "notebook 7"]
    assert allowed and allowed[-1]["subject"] == issued.record.id
    assert allowed[-1]["route"] == "densenet161" and allowed[-1]["scopes"] == "inference"
    assert allowed[-1]["status"] == 200
    denied = next(e for e in logged() if e["request_id"] == request_id)
    assert denied["status"] == 401 and denied["subject"] is None
    assert issued.token not in stack.envoy.log.read_text(errors="replace")
    # the server's log line for the denial carries the same id
    wait_for(
        lambda: f"request_id={request_id}" in stack.extauthz.log.read_text(errors="replace"),
        5,
        "decision log",
    )


def test_rate_limited_tokens_get_429_over_http_and_envoys_mapping_over_grpc(
    stack: Stack,
) -> None:
    limited = tokens.create(
        stack.store(),
        ["densenet161"],
        ["inference"],
        now=time.time(),
        rate_limit=RateLimit(2, "h"),
    ).token
    if time.time() % 3600 > 3590:  # counting windows are aligned hours: not across one
        time.sleep(3600 - time.time() % 3600 + 0.1)
    url = f"{stack.external_url}/predictions/densenet161"
    assert [http(url, "POST", bearer(limited))[0] for _ in range(2)] == [200, 200]
    status, headers, body = http(url, "POST", {**bearer(limited), "x-request-id": "rl-test-1"})
    assert status == 429
    assert 1 <= int(headers["retry-after"]) <= 3600
    assert headers["ratelimit-policy"] == "2;w=3600"
    assert json.loads(body)["error"] == "rate_limited"
    target = f"127.0.0.1:{stack.ports.external.port}"
    with pytest.raises(grpc.RpcError) as info:
        demo_model.call(target, limited)
    # Envoy maps HTTP 429 to gRPC UNAVAILABLE (the gRPC HTTP-to-status table), with the body
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "rate_limited" in (info.value.details() or "")
    # another token is not affected
    assert http(url, "POST", bearer(mint(stack, ["densenet161"], ["inference"])))[0] == 200


def test_envoy_renews_its_connections_to_extauthz(stack: Stack) -> None:
    # SO_REUSEPORT (or a Kubernetes Service) places a connection on one worker for good:
    # Envoy's few long-lived connections are renewed so that load keeps spreading
    def renewed() -> int:
        url = f"http://127.0.0.1:{stack.ports.admin.port}/stats?filter=^cluster.extauthz."
        _, _, text = http(url)
        found = re.search(r"^cluster\.extauthz\.upstream_cx_max_requests: (\d+)$", text, re.M)
        assert found is not None, text[:2000]
        return int(found.group(1))

    before = renewed()
    conn = HTTPConnection("127.0.0.1", stack.ports.external.port, timeout=10)
    try:
        for _ in range(EXTAUTHZ_RENEW_AFTER + 50):  # one client connection: one upstream
            conn.request("GET", "/ping")
            response = conn.getresponse()
            response.read()
            assert response.status == 200
    finally:
        conn.close()
    assert renewed() > before
