from __future__ import annotations

import io
import json
import logging

import pytest

from extauthz.admin.sync import sync
from extauthz.core.decision import RequestFacts
from extauthz.core.policy import parse_policy
from extauthz.runtime.authorizer import Authorizer
from extauthz.runtime.logs import JsonFormatter, LogSampler, RedactingFilter, redact
from extauthz.storage.store import Store


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("token eat_Abc123_-xyzXYZ987654 rejected", "eat_Abc123_-xyzXYZ987654"),
        ("header authorization: Bearer abc.def-ghi", "abc.def-ghi"),
        ("got Basic cGFwZXJzcGFjZTpzZWNyZXQ=", "cGFwZXJzcGFjZTpzZWNyZXQ="),
        ("jwt eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln here", "eyJzdWIiOiJ4In0"),
        ("redis://user:hunter2@redis:6379/0", "hunter2"),
        ('{"cookie": "session=abcdef"}', "session=abcdef"),
    ],
)
def test_redact(text: str, secret: str) -> None:
    assert secret not in redact(text)
    assert "[redacted]" in redact(text)


def test_filter_and_json_formatter() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("bad %s", "Bearer eat_supersecretvalue123", extra={"fields": {"route": "r"}})
        try:
            raise ValueError("eat_inexceptiontoken12345")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0]["msg"] in ("bad [redacted]", "bad Bearer [redacted]")
    assert lines[0]["route"] == "r"
    assert "eat_inexceptiontoken12345" not in stream.getvalue()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_sampler_admits_a_burst_then_a_rate_and_counts_the_rest() -> None:
    clock = Clock()
    sampler = LogSampler(per_second=2, burst=3, clock=clock)
    admitted = [sampler.admit("deny/unknown_token") for _ in range(10)]
    assert admitted == [0, 0, 0] + [None] * 7
    assert sampler.admit("deny/expired_token") == 0  # each kind has its own budget
    clock.now += 0.5
    assert sampler.admit("deny/unknown_token") == 7  # the next line says what it stood for
    assert sampler.admit("deny/unknown_token") is None
    assert sampler.drain() == {"deny/unknown_token": 1}
    assert sampler.drain() == {}


def test_a_denial_flood_logs_a_bounded_number_of_lines(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    sync(store, parse_policy("version: 1\nroutes:\n  m: {access: protected}\n"))
    auth = Authorizer(store)
    auth.refresh_policy()
    with caplog.at_level(logging.INFO, logger="extauthz.decision"):
        for i in range(5000):
            facts = RequestFacts("m\n\x1b[2Jforged", authorization=f"Bearer eat_{i}")
            assert auth.decide(facts).status == 404
            assert auth.decide(RequestFacts("m", authorization=f"Bearer eat_{i}")).status == 401
        auth.log_suppressed()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) < 100
    assert all("\n" not in line and "\x1b" not in line for line in lines)
    summary = lines[-1]
    assert summary.startswith("suppressed ")
    logged = sum(1 for line in lines if "reason=" in line)
    told = sum(int(x.split(" like it")[0]) for line in lines for x in line.split("(+")[1:])
    assert logged + told + int(summary.split()[1]) == 10_000
