"""Alerts as Standard Webhooks against a real redis-server and a real HTTP receiver that
verifies every delivery with the `standardwebhooks` library (docs/webhooks.md): a sender
killed mid-queue loses nothing, a failing receiver is retried, a threshold crossed by two
limiters is sent once, expiring tokens are found by `extauthz serve`, bad settings stop the
start with one line."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from standardwebhooks.webhooks import WebhookVerificationError

from extauthz.admin import tokens
from extauthz.config import load_settings
from extauthz.core import webhooks as wh
from extauthz.core.credentials import token_hash
from extauthz.core.decision import Decision, Outcome
from extauthz.core.limits import TOKENS, Limited
from extauthz.core.token_limit import TokenLimit
from extauthz.dev.ports import free_port
from extauthz.runtime.alerts import ExpiryScan, budget_hook
from extauthz.runtime.limiter import Limiter
from extauthz.runtime.webhooks import Webhooks, webhook_config
from extauthz.storage.store import Store, open_store
from tests.support.admin_api import admin_server
from tests.support.github_signing import keys_document, sign
from tests.support.metrics import scrape
from tests.support.procs import (
    REPO,
    RedisServer,
    extauthz_serve,
    require_binary,
    run_cli,
    stop,
    wait_for,
)
from tests.support.readme import readme_block
from tests.support.webhooks import Receiver, new_secret

pytestmark = pytest.mark.redis

EVENTS = 60


def _webhooks(redis: RedisServer, receiver: Receiver, secret_file: Path, **kw: Any) -> Webhooks:
    settings = load_settings(
        {"webhook_url": receiver.url, "webhook_secret_file": str(secret_file)}, env={}
    )
    config = webhook_config(settings)
    assert config is not None
    return Webhooks(config, open_store(redis.url, "extauthz:", 5.0), **kw)


def _sender(redis: RedisServer, receiver: Receiver, secret_file: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.webhook_sender", redis.url, receiver.url,
         str(secret_file), str(EVENTS)],
        cwd=REPO,
    )  # fmt: skip


def test_a_sender_killed_mid_queue_loses_nothing(tmp_path: Path, redis_server: RedisServer) -> None:
    secret, secret_file = new_secret(tmp_path)
    with Receiver(secret, delay=0.05) as receiver:
        first = _sender(redis_server, receiver, secret_file)
        try:
            wait_for(lambda: len(receiver.delivered()) >= 10, 30, "the first deliveries")
        finally:
            first.kill()  # SIGKILL: no flush, no clean-up, a claim left behind
            first.wait()
        before = len(receiver.delivered())
        assert before < EVENTS, "killed too late: nothing was left in the queue"
        assert int(redis_server.cli("ZCARD", "extauthz:webhooks:due")) > 0
        second = _sender(redis_server, receiver, secret_file)  # (emits the same 60 again)
        try:
            wait_for(lambda: len(receiver.delivered()) == EVENTS, 60, "every event")
            wait_for(
                lambda: redis_server.cli("ZCARD", "extauthz:webhooks:due") == "0",
                10,
                "an empty queue",
            )
        finally:
            stop(second)
    assert not receiver.bad
    delivered = receiver.delivered()
    assert set(delivered) == {f"test.event:{i}" for i in range(EVENTS)}  # none lost
    for webhook_id, copies in delivered.items():
        assert len({c.body for c in copies}) == 1  # a resend is the same event
        event = copies[0].event
        assert event["type"] == "test.event"
        assert f"test.event:{event['data']['n']}" == webhook_id
    # at least once: only what was in flight when the sender died may arrive twice; the
    # events emitted again by the restarted sender were not queued again
    assert sum(len(c) - 1 for c in delivered.values()) <= 1
    assert redis_server.cli("--scan", "--pattern", "extauthz:webhooks:event:*") == ""
    seen = redis_server.cli("--scan", "--pattern", "extauthz:webhooks:seen:*").split()
    assert len(seen) == EVENTS


def test_a_receiver_that_fails_is_retried(tmp_path: Path, redis_server: RedisServer) -> None:
    secret, secret_file = new_secret(tmp_path)
    with Receiver(secret, fail_first=1) as receiver:
        webhooks = _webhooks(redis_server, receiver, secret_file, poll=0.1)
        webhooks.start()
        try:
            assert webhooks.emit("token.leaked", "token.leaked:t1:1", {"token_id": "t1"})
            wait_for(lambda: "token.leaked:t1:1" in receiver.delivered(), 20, "the retry")
        finally:
            webhooks.stop()
    attempts = receiver.attempts
    assert [a.status for a in attempts] == [500, 200]
    assert attempts[0].body == attempts[1].body
    assert 1 <= attempts[1].timestamp - attempts[0].timestamp <= 3  # (1 s backoff)
    assert (webhooks.sent, webhooks.failed, webhooks.queue_length) == (1, 1, 0)


def test_a_day_of_failures_drops_the_event(
    tmp_path: Path, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    secret, secret_file = new_secret(tmp_path)
    now = [time.time()]
    with Receiver(secret, fail_first=10**9) as receiver:
        webhooks = _webhooks(redis_server, receiver, secret_file, clock=lambda: now[0])
        webhooks.emit("budget.threshold", "budget.threshold:x:50", {"threshold": 50})
        webhooks.round()  # first attempt: 500
        assert redis_server.cli("ZCARD", "extauthz:webhooks:due") == "1"
        now[0] += 86400  # (the last attempt is at the day's end)
        with caplog.at_level(logging.WARNING, "extauthz.webhooks"):
            webhooks.round()
    assert [a.status for a in receiver.attempts] == [500]
    assert len(receiver.bad) == 1  # (the second, its clock a day ahead, is refused as too new)
    assert webhooks.dropped["expired"] == 1 and webhooks.failed == 2
    assert "budget.threshold:x:50 (budget.threshold) dropped" in caplog.text
    assert "receiver-secret" not in caplog.text  # (the URL's host only)
    assert redis_server.cli("ZCARD", "extauthz:webhooks:due") == "0"
    metrics = {m.name: m for m in webhooks.collect()}
    assert metrics["extauthz_webhooks_dropped"].samples[0].value == 1


def test_two_limiters_send_a_threshold_once(tmp_path: Path, redis_server: RedisServer) -> None:
    secret, secret_file = new_secret(tmp_path)
    limit = Limited(TOKENS, "token:t1", TokenLimit(1000, "d"), "this token")
    with Receiver(secret) as receiver:
        senders = [_webhooks(redis_server, receiver, secret_file, poll=0.1) for _ in range(2)]
        limiters = [Limiter(s.queue.store, on_total=budget_hook(s)) for s in senders]
        for sender in senders:
            sender.start()
        try:
            allow = Decision(Outcome.ALLOW, 200, "granted", limits=(limit,), reserve=30, model="m")

            def admit(limiter: Limiter) -> None:
                while limiter.admit(allow, time.time()).outcome is Outcome.ALLOW:
                    pass

            threads = [threading.Thread(target=admit, args=(lim,)) for lim in limiters]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            wait_for(lambda: len(receiver.delivered()) == 3, 20, "three thresholds")
            time.sleep(1.0)  # (time for a second copy, were one queued)
        finally:
            for sender in senders:
                sender.stop()
    delivered = receiver.delivered()
    assert not receiver.bad
    assert sorted(delivered) == sorted(
        f"budget.threshold:tl:token:t1:d{int(time.time() // 86400)}:{p}" for p in (50, 80, 100)
    )
    assert all(len(copies) == 1 for copies in delivered.values())
    events = sorted((c[0].event["data"] for c in delivered.values()), key=lambda d: d["threshold"])
    assert [(e["threshold"], e["kind"], e["limit"], e["count"]) for e in events] == [
        (50, "tokens", "1000/d", 1000), (80, "tokens", "1000/d", 1000),
        (100, "tokens", "1000/d", 1000),
    ]  # fmt: skip
    assert all(e["total"] * 100 >= e["threshold"] * 1000 for e in events)
    assert sum(s.queued for s in senders) == 3


def _create(redis: RedisServer, *args: str) -> None:
    run_cli(redis.url, "token", "create", "--route", "m", "--allow-unknown-route", *args)


def test_serve_announces_expiring_tokens_once(tmp_path: Path, redis_server: RedisServer) -> None:
    secret, secret_file = new_secret(tmp_path)
    _create(redis_server, "--id", "soon", "--name", "CI deploy key", "--ttl", "3d")
    _create(redis_server, "--id", "later", "--ttl", "30d")
    _create(redis_server, "--id", "never")
    with Receiver(secret) as receiver:
        flags = ("--webhook-url", receiver.url, "--webhook-secret-file", str(secret_file))
        with (
            extauthz_serve(redis_server.url, tmp_path / "a.log", *flags),
            extauthz_serve(redis_server.url, tmp_path / "b.log", *flags),
        ):
            wait_for(lambda: len(receiver.delivered()) == 1, 20, "token.expiring")
            time.sleep(1.5)  # (time for a second scan's events, were there one)
    (delivered,) = receiver.delivered().values()
    assert len(delivered) == 1 and not receiver.bad
    event = delivered[0].event
    assert event["type"] == "token.expiring"
    assert set(event["data"]) == {"token_id", "name", "expires_at"}
    assert (event["data"]["token_id"], event["data"]["name"]) == ("soon", "CI deploy key")
    assert delivered[0].webhook_id.startswith("token.expiring:soon:")
    assert redis_server.cli("TTL", "extauthz:webhooks:scan") != "-2"  # one scan an hour
    logs = (tmp_path / "a.log").read_text() + (tmp_path / "b.log").read_text()
    assert logs.count("expiring soon announced") == 1  # one process scanned
    assert "sending alerts to 127.0.0.1:" in logs
    assert secret[6:] not in logs and "receiver-secret" not in logs


def test_serve_exposes_webhook_metrics(tmp_path: Path, redis_server: RedisServer) -> None:
    secret, secret_file = new_secret(tmp_path)
    _create(redis_server, "--id", "soon", "--ttl", "1d")
    with Receiver(secret) as receiver:
        port = free_port()
        extra = ("--webhook-url", receiver.url, "--webhook-secret-file", str(secret_file),
                 "--metrics-listen", f"127.0.0.1:{port}")  # fmt: skip
        with extauthz_serve(redis_server.url, tmp_path / "serve.log", *extra):
            wait_for(lambda: len(receiver.delivered()) == 1, 20, "token.expiring")
            wait_for(lambda: "extauthz_webhooks_sent_total 1.0" in scrape(port), 10, "metrics")
            text = scrape(port)
    assert 'extauthz_webhooks_dropped_total{reason="expired"} 0.0' in text
    assert "extauthz_webhooks_queue_length 0.0" in text
    assert "extauthz_webhooks_failed_attempts_total 0.0" in text


@pytest.mark.parametrize(
    ("content", "words"),
    [(None, "cannot read --webhook-secret-file"), (b"", "is empty"),
     (b"not-a-secret-at-all-not-a-secret", "does not start with whsec_")],
)  # fmt: skip
@pytest.mark.parametrize("command", [("serve",), ("serve", "--workers", "2"), ("admin",)])
def test_bad_webhook_settings_stop_the_start_with_one_line(
    tmp_path: Path, redis_server: RedisServer, content: bytes | None, words: str,
    command: tuple[str, ...],
) -> None:  # fmt: skip
    path = tmp_path / "secret"
    if content is not None:
        path.write_bytes(content)
    result = run_cli(
        redis_server.url, *command, "--webhook-url", "http://127.0.0.1:9/x",
        "--webhook-secret-file", str(path), check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("extauthz: error: --webhook-secret-file") or "cannot read" in line
    assert words in line and "not-a-secret" not in line


def test_the_expiry_scan_runs_in_one_process_at_a_time(redis_server: RedisServer) -> None:
    store: Store = open_store(redis_server.url, "extauthz:", 5.0)
    emitted: list[str] = []

    def emit(kind: str, event_id: str, data: Any, keep_until: float | None) -> bool:
        emitted.append(event_id)
        return True

    _create(redis_server, "--id", "soon", "--ttl", "2d")
    scans = [ExpiryScan(store, emit, 7 * 86400, holder, every=60) for holder in ("a", "b")]
    now = time.time()
    for scan in scans:
        scan(now)
    assert len(emitted) == 1 and emitted[0].startswith("token.expiring:soon:")
    scans[0](now + 1)  # (not its turn yet)
    assert len(emitted) == 1


# --- the documentation, as written ----------------------------------------------------------


def test_the_documented_secret_and_receiver_work(tmp_path: Path, redis_server: RedisServer) -> None:
    subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + readme_block("webhook-secret")],
        cwd=tmp_path, check=True, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    secret_file = tmp_path / "webhook-secret"
    assert oct(secret_file.stat().st_mode & 0o777) == "0o600"
    assert len(wh.parse_secret(secret_file.read_text())) == 32
    namespace: dict[str, Any] = {}
    cwd = Path.cwd()
    os.chdir(tmp_path)  # (the block reads webhook-secret where it runs)
    try:
        exec(readme_block("webhook-verify", lang="python"), namespace)  # noqa: S102 (our docs)
    finally:
        os.chdir(cwd)
    received: list[dict[str, Any]] = []

    class Documented(Receiver):  # (the documented receive() checks what the server sends)
        def verify(self, body: bytes, headers: dict[str, str]) -> Any:
            received.append(namespace["receive"](body, headers))
            return super().verify(body, headers)

    with Documented(secret_file.read_text().strip()) as receiver:
        webhooks = _webhooks(redis_server, receiver, secret_file)
        webhooks.emit("token.leaked", "token.leaked:t9:1", {"token_id": "t9"})
        webhooks.round()
    assert [r["data"] for r in received] == [{"token_id": "t9"}]
    with pytest.raises(WebhookVerificationError):
        namespace["receive"](b'{"type":"forged"}', {"webhook-id": "x", "webhook-timestamp":
                             str(int(time.time())), "webhook-signature": "v1,AAAA"})  # fmt: skip


def test_the_documented_redis_cli_commands(tmp_path: Path, redis_server: RedisServer) -> None:
    secret, secret_file = new_secret(tmp_path)
    receiver = Receiver(secret)  # (not started: nothing answers, the event waits)
    webhooks = _webhooks(redis_server, receiver, secret_file)
    webhooks.emit("token.expiring", "token.expiring:t1:1900000000", {"token_id": "t1"})
    webhooks.flush()
    receiver.server.server_close()
    redis_server.cli("ZADD", "extauthz:webhooks:due", "XX", str(time.time() + 3600),
                     "token.expiring:t1:1900000000")  # fmt: skip
    cli = require_binary("redis-cli")
    script = (
        f'redis-cli() {{ "{cli}" -p {redis_server.port} "$@"; }}\nset -euo pipefail\n'
        + readme_block("redis-cli-webhooks")
    )
    out = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, check=True,
        env={"PATH": "/usr/bin:/bin"},
    ).stdout  # fmt: skip
    assert out.startswith("1\ntoken.expiring:t1:1900000000\n")
    assert '"type":"token.expiring"' in out
    due = float(redis_server.cli("ZSCORE", "extauthz:webhooks:due", "token.expiring:t1:1900000000"))
    assert due <= time.time() + 1  # due again now


def test_the_documented_server_acl_user_can_send(tmp_path: Path) -> None:
    acl = tmp_path / "users.acl"
    acl.write_text("user default on nopass ~* &* +@all\n" + readme_block("redis-acl", lang=""))
    server = RedisServer(tmp_path, extra=("--aclfile", str(acl)))
    server.start()
    try:
        admin = f"redis://extauthz-admin:CHANGE-ME-admin@127.0.0.1:{server.port}/0"
        server_user = f"redis://extauthz-server:CHANGE-ME-server@127.0.0.1:{server.port}/0"
        run_cli(admin, "token", "create", "--route", "m", "--allow-unknown-route", "--id",
                "soon", "--ttl", "1d")  # fmt: skip
        secret, secret_file = new_secret(tmp_path)
        with Receiver(secret, fail_first=1) as receiver:
            config = webhook_config(
                load_settings(
                    {"webhook_url": receiver.url, "webhook_secret_file": str(secret_file)}, env={}
                )
            )
            assert config is not None
            store = open_store(server_user, "extauthz:", 5.0)
            webhooks = Webhooks(config, store, poll=0.1)
            webhooks.tasks.append(ExpiryScan(store, webhooks.emit, 7 * 86400, webhooks.sender))
            webhooks.start()
            try:  # queued, claimed, failed, retried, delivered; the scan's lease and reads
                wait_for(lambda: len(receiver.delivered()) == 1, 20, "token.expiring")
            finally:
                webhooks.stop()
        assert [a.status for a in receiver.attempts] == [500, 200]
        assert webhooks.queue_length == 0 and not receiver.bad
    finally:
        server.stop()


def test_admin_sends_and_stops_cleanly(tmp_path: Path, redis_server: RedisServer) -> None:
    secret, secret_file = new_secret(tmp_path)
    _create(redis_server, "--id", "soon", "--ttl", "2d")
    log = tmp_path / "admin.log"
    with Receiver(secret) as receiver:
        flags = ("--webhook-url", receiver.url, "--webhook-secret-file", str(secret_file))
        with admin_server(redis_server.url, log, *flags):
            wait_for(lambda: len(receiver.delivered()) == 1, 20, "token.expiring from admin")
    (webhook_id,) = receiver.delivered()
    assert webhook_id.startswith("token.expiring:soon:")
    text = log.read_text()
    assert "sending alerts to 127.0.0.1:" in text and "Traceback" not in text
    assert secret[6:] not in text and "receiver-secret" not in text


def test_a_leak_reported_to_admin_is_sent_once(tmp_path: Path, redis_server: RedisServer) -> None:
    github = ec.generate_private_key(ec.SECP256R1())
    keys = tmp_path / "github-keys.json"
    keys.write_bytes(keys_document(("b" * 64, github, True)))
    store = open_store(redis_server.url, "extauthz:", 5.0)
    issued = tokens.create(
        store, ["m"], token_id="leaky", now=time.time(), allow_unknown_route=True
    )
    secret, secret_file = new_secret(tmp_path)
    found = {"token": issued.token, "type": "extauthz_token", "source": "commit",
             "url": "https://github.com/octo/repo/blob/0123abc/config.py"}  # fmt: skip
    body = json.dumps([found]).encode()
    headers = {"Github-Public-Key-Identifier": "b" * 64, "Github-Public-Key-Signature": ""}
    with Receiver(secret) as receiver:
        flags = ("--webhook-url", receiver.url, "--webhook-secret-file", str(secret_file),
                 "--secret-scanning-keys", str(keys))  # fmt: skip
        with admin_server(redis_server.url, tmp_path / "admin.log", *flags) as api:
            for _ in range(2):  # (GitHub may send a report again: one event)
                headers["Github-Public-Key-Signature"] = sign(github, body)
                status, _ = api.send("POST", "/v1/secret-scanning", raw=body, headers=headers)
                assert status == 200
            wait_for(lambda: len(receiver.delivered()) == 1, 20, "token.leaked")
            time.sleep(1.0)  # (time for a second event, were one queued)
    ((webhook_id, copies),) = receiver.delivered().items()
    assert webhook_id.startswith("token.leaked:leaky:") and len(copies) == 1
    event = copies[0].event
    assert event["type"] == "token.leaked"
    assert event["data"]["token_id"] == "leaky" and event["data"]["url"] == found["url"]
    assert event["data"]["on_leak"] == "revoke" and event["data"]["source"] == "commit"
    assert issued.token not in copies[0].body.decode()
    assert token_hash(issued.token) not in copies[0].body.decode()
    store.close()
