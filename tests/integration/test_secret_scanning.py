"""A leaked key, end to end: the local stack (a real redis-server, `extauthz serve` behind the
real Envoy binary), and a real `extauthz admin` with GitHub's keys (a key pair made here, the
document in GitHub's published shape). A signed report of a live token → refused through
Envoy within a second of the POST; a bad signature → 401 and no lookup in Redis; `on_leak:
notify` keeps the token working and audits it; `extauthz token leaked -` does it by hand."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from extauthz.admin import audit, tokens
from extauthz.admin.sync import sync
from extauthz.config import Settings
from extauthz.core.credentials import token_hash
from extauthz.core.policy import load_policy_file, parse_policy
from extauthz.dev.stack import BASIC_SECRET_ENV, Stack
from tests.support.admin_api import Api, admin_server
from tests.support.github_signing import keys_document, sign
from tests.support.procs import REPO, local_stack

pytestmark = [pytest.mark.redis, pytest.mark.envoy]

GITHUB = ec.generate_private_key(ec.SECP256R1())
ATTACKER = ec.generate_private_key(ec.SECP256R1())
KEY_ID = "a" * 64


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with local_stack(tmp_path_factory.mktemp("stack"), Settings(auth_failure_burst=100000)) as s:
        yield s


@pytest.fixture(scope="module")
def api(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    work = tmp_path_factory.mktemp("admin")
    keys = work / "github-keys.json"
    keys.write_bytes(keys_document((KEY_ID, GITHUB, True)))
    with admin_server(
        stack.redis_url, work / "admin.log", "--secret-scanning-keys", str(keys)
    ) as a:
        LOG[a.port] = work / "admin.log"
        yield a


LOG: dict[int, Path] = {}  # the admin's log, by its port


def _through_envoy(stack: Stack, token: str) -> int:
    request = urllib.request.Request(
        f"{stack.external_url}/deployments/a/predict",
        method="POST",
        headers={"authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def _report(api: Api, body: bytes, key: ec.EllipticCurvePrivateKey = GITHUB) -> tuple[int, bytes]:
    headers = {
        "Github-Public-Key-Identifier": KEY_ID,
        "Github-Public-Key-Signature": sign(key, body),
    }
    return api.send("POST", "/v1/secret-scanning", raw=body, headers=headers)


def _lookups(stack: Stack) -> int:
    """Redis's count of the commands a report's lookups use (EXISTS, HGET, HGETALL)."""
    store = stack.store()
    stats = store.client.info("commandstats")
    store.close()
    return sum(
        int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("exists", "hget", "hgetall")
    )


def _leaked_events(stack: Stack) -> list[dict[str, object]]:
    store = stack.store()
    events = [e for e in audit.tail(store, 200) if e["action"] == "token.leaked"]
    store.close()
    return events


def test_a_reported_token_is_refused_through_envoy_within_a_second(stack: Stack, api: Api) -> None:
    issued = tokens.create(stack.store(), ["deployment-a"], token_id="leaky", now=time.time())
    for _ in range(3):  # (cached by the server from the first)
        assert _through_envoy(stack, issued.token) == 200
    match = {"token": issued.token, "type": "extauthz_token", "source": "commit",
             "url": "https://github.com/octo/repo/blob/0123abc/config.py"}  # fmt: skip
    stranger = {"token": "eat_" + "Q" * 38, "type": "extauthz_token", "url": "", "source": "npm"}
    body = json.dumps([match, stranger], separators=(",", ":")).encode()
    assert api.conformance  # (the document's checker, built before the clock starts)
    refused_at: list[float] = []

    def poll() -> None:  # requests through Envoy, one after another, until one is refused
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if _through_envoy(stack, issued.token) == 401:
                refused_at.append(time.monotonic())
                return

    poller = threading.Thread(target=poll)
    started = time.monotonic()
    poller.start()
    status, answer = _report(api, body)
    answered = time.monotonic() - started
    poller.join()
    assert refused_at, "the leaked token was never refused"
    refused = refused_at[0] - started
    print(f"\nleak report answered in {answered * 1000:.0f} ms; refused through Envoy "
          f"{refused * 1000:.0f} ms after the POST was sent")  # fmt: skip
    assert status == 200 and refused < 1.0
    assert json.loads(answer) == [
        {"token_hash": token_hash(issued.token), "token_type": "extauthz_token",
         "label": "true_positive"},
        {"token_hash": token_hash(stranger["token"]), "token_type": "extauthz_token",
         "label": "false_positive"},
    ]  # fmt: skip
    (event,) = [e for e in _leaked_events(stack) if e["target"] == "leaky"]
    assert event["actor"] == "github:secret-scanning"
    assert event["detail"] == {"url": match["url"], "source": "commit", "type": "extauthz_token",
                               "on_leak": "revoke", "secrets": 1}  # fmt: skip
    log = LOG[api.port].read_text()
    assert "token leaky leaked" in log and issued.token not in log


def test_a_bad_signature_is_401_and_nothing_is_looked_up(stack: Stack, api: Api) -> None:
    issued = tokens.create(stack.store(), ["deployment-a"], now=time.time())
    body = json.dumps([{"token": issued.token, "type": "t", "url": "", "source": "content"}])
    raw = body.encode()
    before = _lookups(stack)
    for headers in (
        {
            "Github-Public-Key-Identifier": KEY_ID,
            "Github-Public-Key-Signature": sign(ATTACKER, raw),
        },
        {
            "Github-Public-Key-Identifier": "b" * 64,
            "Github-Public-Key-Signature": sign(GITHUB, raw),
        },
        {"Github-Public-Key-Identifier": KEY_ID, "Github-Public-Key-Signature": "AAAA"},
        {"Github-Public-Key-Identifier": KEY_ID},
        {},
    ):
        status, answer = api.send("POST", "/v1/secret-scanning", raw=raw, headers=headers)
        assert status == 401 and json.loads(answer)["error"] == "unauthorized", (headers, answer)
    # signed, then changed on the way
    signed = sign(GITHUB, raw)
    tampered = raw.replace(b'"content"', b'"commit"')
    status, _ = api.send("POST", "/v1/secret-scanning", raw=tampered,
                         headers={"Github-Public-Key-Identifier": KEY_ID,
                                  "Github-Public-Key-Signature": signed})  # fmt: skip
    assert status == 401
    assert _lookups(stack) == before  # not one EXISTS, HGET or HGETALL
    assert _through_envoy(stack, issued.token) == 200
    before = _lookups(stack)  # (that request read the token)
    # signed, but not a report: 400 naming what is wrong, still nothing looked up
    for bad, fragment in ((b"{", "not JSON"), (b'[{"token": 7}]', "[0].token"),
                          (json.dumps([{"token": "x"}] * 1001).encode(), "at most 1000")):  # fmt: skip
        status, answer = _report(api, bad)
        assert status == 400 and fragment in json.loads(answer)["message"], answer
    assert _lookups(stack) == before


def test_on_leak_notify_keeps_the_token_working_and_audits_it(stack: Stack, api: Api) -> None:
    policy = (REPO / "examples/policy.yaml").read_text()
    store = stack.store()
    env = {BASIC_SECRET_ENV: stack.basic_secret}
    sync(store, parse_policy(policy.replace("routes:", "on_leak: notify\nroutes:", 1)), env=env)
    try:
        issued = tokens.create(store, ["deployment-a"], token_id="noisy", now=time.time())
        assert _through_envoy(stack, issued.token) == 200
        body = json.dumps([{"token": issued.token, "type": "t", "url": "u", "source": "content"}])
        status, answer = _report(api, body.encode())
        assert status == 200 and json.loads(answer)[0]["label"] == "true_positive"
        time.sleep(0.3)
        assert _through_envoy(stack, issued.token) == 200
        (event,) = [e for e in _leaked_events(stack) if e["target"] == "noisy"]
        assert event["detail"]["on_leak"] == "notify"  # type: ignore[index]
    finally:
        sync(store, load_policy_file(str(REPO / "examples/policy.yaml")), env=env)
        store.close()


def test_token_leaked_by_hand(stack: Stack) -> None:
    issued = tokens.create(stack.store(), ["deployment-a"], token_id="pasted", now=time.time())
    assert _through_envoy(stack, issued.token) == 200

    def leaked(secret: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "extauthz", "token", "leaked", "-", "--redis-url",
             stack.redis_url, "--url", "https://paste.example/x"],
            input=secret + "\n", capture_output=True, text=True, cwd=REPO, timeout=60,
        )  # fmt: skip

    first = leaked(issued.token)
    assert (first.returncode, first.stdout) == (0, "revoked pasted\n"), first.stderr
    assert _through_envoy(stack, issued.token) == 401
    again = leaked(issued.token)
    assert again.returncode == 3 and again.stdout.startswith("not ours"), again.stderr
    assert issued.token not in first.stdout + first.stderr + again.stdout + again.stderr
    (event,) = [e for e in _leaked_events(stack) if e["target"] == "pasted"]
    assert event["detail"]["url"] == "https://paste.example/x"  # type: ignore[index]
    assert str(event["actor"]).startswith("cli:")


def test_a_keys_file_that_cannot_be_used_stops_the_admin_with_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "keys.json"
    broken.write_text('{"public_keys": [{"key_identifier": "k", "key": "not PEM"}]}')
    for path, fragment in (
        (broken, "public_keys[0].key: not a PEM public key"),
        (tmp_path / "missing.json", "cannot read it"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "extauthz", "admin", "--secret-scanning-keys", str(path),
             "--redis-url", "redis://127.0.0.1:1/0"],
            capture_output=True, text=True, cwd=REPO, timeout=60,
        )  # fmt: skip
        lines = result.stderr.splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert (
            lines[0].startswith("extauthz: error: --secret-scanning-keys") and fragment in lines[0]
        )
