"""Alerts as Standard Webhooks (docs/webhooks.md), the pure parts and the settings: the
signature against the spec's vector and the reference library, the secret file's bad
classes, the retry schedule, the thresholds, and the limiter's hook (fakeredis here; real
Redis and a real receiver in tests/integration/test_webhooks.py)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook

from extauthz.config import load_settings
from extauthz.core import webhooks as wh
from extauthz.core.budget import Budget
from extauthz.core.decision import Decision, Outcome
from extauthz.core.limits import MONEY, REQUESTS, TOKENS, Limited
from extauthz.core.rate_limit import RateLimit
from extauthz.core.token_limit import TokenLimit
from extauthz.errors import ConfigError
from extauthz.runtime.alerts import BudgetAlerts
from extauthz.runtime.limiter import Limiter
from extauthz.runtime.logs import redact
from extauthz.runtime.webhooks import WebhookConfig, Webhooks, emit, install, webhook_config
from extauthz.storage.client import DECODING
from extauthz.storage.store import Store

# the Standard Webhooks spec's test vector (its reference libraries test the same)
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
GOOD_SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
START = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def test_signature_matches_the_spec_vector() -> None:
    key = wh.parse_secret(SPEC_SECRET)
    assert wh.sign(key, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE
    headers = wh.signed_headers(key, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY)
    assert headers["webhook-signature"] == SPEC_SIGNATURE
    assert (headers["webhook-id"], headers["webhook-timestamp"]) == (SPEC_ID, "1614265330")


@given(
    key=st.binary(min_size=24, max_size=64),
    event_id=st.text(min_size=1, max_size=300),
    body=st.binary(max_size=2000),
)
def test_the_reference_library_verifies_what_is_signed(
    key: bytes, event_id: str, body: bytes
) -> None:
    secret = "whsec_" + base64.b64encode(key).decode()
    assert wh.parse_secret(secret) == key
    webhook_id = wh.webhook_id(event_id)
    headers = wh.signed_headers(key, webhook_id, SPEC_TIMESTAMP, body)
    # (verify checks the timestamp against the clock: sign with the library instead)
    from datetime import UTC, datetime

    when = datetime.fromtimestamp(SPEC_TIMESTAMP, UTC)
    assert Webhook(secret).sign(webhook_id, when, body) == headers["webhook-signature"]
    assert all(v.isascii() and v.isprintable() for v in headers.values())


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        ("  \n", "empty"),
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "does not start with whsec_"),
        ("whsec_", "is 0 bytes"),
        ("whsec_not base64!", "not base64"),
        ("whsec_" + base64.b64encode(b"x" * 23).decode(), "is 23 bytes"),
        ("whsec_" + base64.b64encode(b"x" * 65).decode(), "is 65 bytes"),
        ("whsec_" + base64.b64encode(b"x" * 32).decode() + "\x00", "not base64"),
        ("whsec_" + base64.b64encode(b"x" * 32).decode()[:-2], "not base64"),  # (padding cut)
        ("WHSEC_" + base64.b64encode(b"x" * 32).decode(), "does not start with whsec_"),
        ("whsec_" + "A" * 100_000, "bytes"),
    ],
)
def test_bad_secrets_are_refused_saying_why(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why) as info:
        wh.parse_secret(text)
    assert "whsec_ followed by the base64" in str(info.value)
    assert text.strip()[6:30] not in str(info.value) or not text.strip()[6:30]


def test_a_secret_with_a_trailing_newline_is_read() -> None:
    assert len(wh.parse_secret(GOOD_SECRET + "\n")) == 32


def _settings(tmp_path: Path, content: bytes | None, **more: str) -> Any:
    path = tmp_path / "secret"
    if content is not None:
        path.write_bytes(content)
    values = {
        "webhook_url": "https://hooks.example/alerts?token=abc",
        "webhook_secret_file": str(path),
        **more,
    }
    return load_settings(values, env={})


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read --webhook-secret-file .*: No such file"),
        (b"", "it is empty"),
        (b"\n\n", "it is empty"),
        (b"\xff\xfewhsec_\x80", "is not ASCII text"),
        (b"hunter2-hunter2-hunter2-hunter2", "does not start with whsec_"),
        (b"whsec_" + b"A" * 5000, "larger than 4096 bytes"),
        (b"whsec_\x1b[31mAAAA", "not base64"),
    ],
)
def test_a_bad_secret_file_is_one_line_at_start(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        webhook_config(_settings(tmp_path, content))
    text = str(info.value)
    assert "\n" not in text and "hunter2" not in text and "\x1b" not in text


def test_a_secret_file_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    for path in (str(tmp_path), "/dev/zero"):
        settings = load_settings(
            {"webhook_url": "http://127.0.0.1:1/", "webhook_secret_file": path}, env={}
        )
        with pytest.raises(ConfigError, match="not a regular file"):
            webhook_config(settings)


@pytest.mark.parametrize(
    "url",
    ["ftp://host/x", "file:///etc/passwd", "javascript:alert(1)", "http://", "hooks.example/x",
     "https://host/a\nb", "http:///path", "gopher://h/"],
)  # fmt: skip
def test_a_bad_url_is_refused(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigError, match="--webhook-url: expected an http:// or https://"):
        webhook_config(_settings(tmp_path, GOOD_SECRET.encode(), webhook_url=url))


def test_url_and_secret_file_go_together(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--webhook-url needs --webhook-secret-file"):
        webhook_config(load_settings({"webhook_url": "http://127.0.0.1:1/"}, env={}))
    with pytest.raises(ConfigError, match="--webhook-secret-file needs --webhook-url"):
        webhook_config(load_settings({"webhook_secret_file": str(tmp_path)}, env={}))
    assert webhook_config(load_settings({}, env={})) is None


def test_a_good_config_keeps_its_secrets_out_of_repr(tmp_path: Path) -> None:
    settings = _settings(tmp_path, GOOD_SECRET.encode() + b"\n", expiry_warning="3d")
    config = webhook_config(settings)
    assert config is not None
    assert (config.key, config.expiry_warning, config.host) == (
        bytes(range(32)),
        3 * 86400,
        "hooks.example",
    )
    assert "token=abc" not in repr(config) and "token=abc" not in repr(settings)
    assert GOOD_SECRET[6:20] not in repr(config)


@pytest.mark.parametrize("warning", ["0d", "7", "-1d", "1w", "99999999999999d", "7d\n"])
def test_a_bad_expiry_warning_is_refused(tmp_path: Path, warning: str) -> None:
    with pytest.raises(ConfigError, match="--expiry-warning"):
        webhook_config(_settings(tmp_path, GOOD_SECRET.encode(), expiry_warning=warning))


def test_logs_redact_a_secret_that_slips_in() -> None:
    assert "MfKQ9r8" not in redact(f"loaded {SPEC_SECRET}")


def test_retry_schedule_doubles_up_to_an_hour() -> None:
    delays = [wh.retry_delay(n) for n in range(1, 16)]
    assert delays[:6] == [1, 2, 4, 8, 16, 32]
    assert delays[12:] == [3600, 3600, 3600]
    assert delays == sorted(delays)
    assert wh.retry_delay(10**9) == 3600  # (no overflow)


def test_attempts_last_a_day_from_the_first_then_the_event_is_dropped() -> None:
    first, now, failures, attempts = START, START, 0, [START]
    while True:
        failures += 1
        at = wh.next_attempt(first, failures, now)
        if at is None:
            break
        attempts.append(at)
        now = at
    assert attempts[-1] == first + 86400  # the last try at the day's end...
    assert now - first == 86400  # ...after which the next failure drops it
    assert 30 < len(attempts) < 40  # 1 s, 2 s, ... 1 h: about 35 attempts a day
    assert wh.next_attempt(first, 20, first + 86400 - 10) == first + 86400
    assert wh.next_attempt(first, 3, first + 86400 - 10) == first + 86400 - 6


@pytest.mark.parametrize(
    ("total", "count", "above", "reached"),
    [(0, 1000, 0, ()), (499, 1000, 0, ()), (500, 1000, 0, (50,)), (799, 1000, 50, ()),
     (800, 1000, 50, (80,)), (1000, 1000, 0, (50, 80, 100)), (1000, 1000, 100, ()),
     (1, 1, 0, (50, 80, 100)), (1, 3, 0, ()), (2, 3, 0, (50,)), (5, 0, 0, ()),
     (10**15, 10**15 - 1, 80, (100,))],
)  # fmt: skip
def test_thresholds_reached(total: int, count: int, above: int, reached: tuple[int, ...]) -> None:
    assert wh.thresholds_reached(total, count, above) == reached


def test_webhook_ids_are_stable_and_plain_ascii() -> None:
    plain = "budget.threshold:tl:token:t1:d20833:80"
    assert wh.webhook_id(plain) == plain
    for odd in ("route:llm:caller with spaces", "é", "a\r\nx-injected: 1", "x" * 201, "a\ud800"):
        found = wh.webhook_id(odd)
        assert found.startswith("sha256:") and len(found) == 71
        assert found == wh.webhook_id(odd)
    assert wh.webhook_id("x" * 201) != wh.webhook_id("x" * 202)


def test_the_body_is_type_timestamp_and_data() -> None:
    body = wh.event_body("token.leaked", START + 0.9, {"token_id": "t1", "name": "é"})
    assert json.loads(body) == {
        "type": "token.leaked",
        "timestamp": "2027-01-15T08:00:00Z",
        "data": {"token_id": "t1", "name": "é"},
    }
    assert body.isascii()
    with pytest.raises(ValueError):
        wh.event_body("x", START, {"n": float("nan")})
    with pytest.raises(TypeError):
        wh.event_body("x", START, {"n": object()})


# --- budget.threshold from the limiter ------------------------------------------------------


class Emitted(list[tuple[str, str, dict[str, Any], float | None]]):
    def __call__(self, kind: str, event_id: str, data: Any, keep_until: float | None) -> bool:
        self.append((kind, event_id, dict(data), keep_until))
        return True


def _allow(reserve: int, *limits: Limited) -> Decision:
    return Decision(
        Outcome.ALLOW, 200, "granted", limits=limits, reserve=reserve, model="m",
        metadata=(("subject", "t1"),),
    )  # fmt: skip


def test_the_limiter_announces_each_threshold_once_per_window() -> None:
    emitted = Emitted()
    store = Store(fakeredis.FakeRedis(**DECODING), "extauthz:")
    limiter = Limiter(store, on_total=BudgetAlerts(emitted).on_total)
    limit = Limited(TOKENS, "token:t1", TokenLimit(1000, "d"), "this token")
    requests = Limited(REQUESTS, "token:t1", RateLimit(10, "s"), "this token")
    for _ in range(9):  # 900 of 1000: 50 and 80
        assert limiter.admit(_allow(100, limit, requests), START + 1).outcome is Outcome.ALLOW
    assert [e[1] for e in emitted] == [
        "budget.threshold:tl:token:t1:d20833:50",
        "budget.threshold:tl:token:t1:d20833:80",
    ]
    assert emitted[0][2] == {
        "kind": "tokens",
        "scope": "token:t1",
        "limit": "1000/d",
        "count": 1000,
        "threshold": 50,
        "total": emitted[0][2]["total"],
        "window_end": "2027-01-16T00:00:00Z",
    }
    assert 500 <= emitted[0][2]["total"] < 800
    assert emitted[0][3] == 20834 * 86400 + 86400  # (kept a day past the window)
    limiter.admit(_allow(100, limit), START + 2)
    assert limiter.admit(_allow(100, limit), START + 3).outcome is Outcome.DENY
    assert [e[1][-3:] for e in emitted] == [":50", ":80", "100"]
    limiter.admit(_allow(600, limit), START + 86400)  # the next window: 50 again
    assert emitted[-1][1] == "budget.threshold:tl:token:t1:d20834:50"
    assert all(e[2]["kind"] == "tokens" for e in emitted)  # (never the request counters)


def test_a_jump_past_several_thresholds_announces_each() -> None:
    emitted = Emitted()
    alerts = BudgetAlerts(emitted)
    limit = Limited(TOKENS, "team:t", TokenLimit(10, "m"), "team t")
    alerts.on_total(limit, 10, START + 60)
    alerts.on_total(limit, 10, START + 60)
    assert [e[2]["threshold"] for e in emitted] == [50, 80, 100]
    alerts.on_total(Limited(REQUESTS, "team:t", RateLimit(10, "m"), "team t"), 10, START + 60)
    assert len(emitted) == 3


# --- the outbox: the request path never waits for Redis -------------------------------------


def test_while_redis_is_down_events_wait_in_memory_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = fakeredis.FakeServer()
    store = Store(fakeredis.FakeRedis(server=server, **DECODING), "extauthz:")
    config = WebhookConfig("http://127.0.0.1:9/", bytes(32))
    webhooks = Webhooks(config, store, clock=lambda: START)
    server.connected = False
    assert all(webhooks.emit("test.event", f"e{i}", {"n": i}) for i in range(3))  # (no Redis)
    assert webhooks.flush() is False
    monkeypatch.setattr("extauthz.runtime.webhooks.MAX_OUTBOX", 4)
    assert webhooks.emit("test.event", "e3", {"n": 3}) is True
    assert webhooks.emit("test.event", "e4", {"n": 4}) is False  # full: dropped, counted
    assert webhooks.dropped["outbox_full"] == 1
    server.connected = True
    webhooks.emit("test.event", "e0", {"n": 0})  # (the same event again: queued once)
    assert webhooks.flush() is True and webhooks.queued == 4
    assert store.client.zrange("extauthz:webhooks:due", 0, -1) == ["e0", "e1", "e2", "e3"]
    assert json.loads(store.client.hget("extauthz:webhooks:event:e2", "body")) == {
        "type": "test.event",
        "timestamp": "2027-01-15T08:00:00Z",
        "data": {"n": 2},
    }
    webhooks.emit("test.event", "bad", {"n": float("inf")})  # not JSON: dropped, counted
    assert webhooks.flush() is True and webhooks.dropped["not_json"] == 1


def test_emit_without_a_sender_is_a_no_op() -> None:
    install(None)
    assert emit("token.leaked", "token.leaked:t1:1", {"token_id": "t1"}) is False


def test_money_budgets_are_announced_in_their_own_words() -> None:
    emitted = Emitted()
    budget = Limited(MONEY, "team:acme", Budget.parse("$50/mo"), "team acme")
    BudgetAlerts(emitted).on_total(budget, 40_000_000, START + 60)
    assert [(e[1], e[2]["kind"], e[2]["limit"], e[2]["count"]) for e in emitted] == [
        ("budget.threshold:bl:team:acme:mo24324:50", "budget", "$50/mo", 50_000_000),
        ("budget.threshold:bl:team:acme:mo24324:80", "budget", "$50/mo", 50_000_000),
    ]
