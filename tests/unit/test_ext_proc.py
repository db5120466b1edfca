"""The ext_proc service (issue #25) fed Envoy's messages directly: what it charges, what it
settles, and what it says when it cannot count (the real Envoy: tests/integration)."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import struct_pb2

from bench.llm_limits import response_messages
from extauthz.core.decision import Decision, Outcome
from extauthz.core.token_limit import TokenLimit, TokenLimited
from extauthz.runtime.ext_proc import UsageProcessor
from extauthz.runtime.metrics import Metrics
from extauthz.runtime.token_limiter import METADATA_KEY, TokenLimiter
from extauthz.runtime.usage import UsageMeter
from extauthz.storage.store import Store

START = 1_800_000_000.0
LIMIT = TokenLimited("token:t1", TokenLimit(1000, "m"), "this token")


def metadata(**fields: str) -> Any:
    out = struct_pb2.Struct()
    out.update({"token_id": "t1", "route": "llm", "model": "m", **fields})
    return out


def run(processor: UsageProcessor, messages: Any) -> None:
    for _ in processor.Process(messages, None):
        pass


def test_a_response_is_charged_and_its_reservation_settled(store: Store) -> None:
    limiter = TokenLimiter(store)
    allowed = limiter.admit(
        Decision(Outcome.ALLOW, 200, "granted", token_limits=(LIMIT,), reserve=600), START
    )
    reserved = dict(allowed.metadata)[METADATA_KEY]
    meter = UsageMeter(store, flush_every=10**9)
    processor = UsageProcessor(meter, Metrics(), 4, clock=lambda: START, token_limiter=limiter)
    usage = {"prompt_tokens": 30, "completion_tokens": 70}
    run(processor, response_messages(metadata(**{METADATA_KEY: reserved}), usage, chunks=3))
    # 600 reserved, 100 used: 900 left in the window for this process
    again = Decision(Outcome.ALLOW, 200, "granted", token_limits=(LIMIT,), reserve=900)
    assert limiter.admit(again, START + 1).outcome is Outcome.ALLOW
    meter.flush()
    day = store.llm_token_usage("t1", [int(START // 86400)])[0]
    assert day == {"m": {"prompt_tokens": 30, "completion_tokens": 70}}


def test_what_cannot_be_counted_is_a_metric_and_one_warning_a_minute(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    now = [START]
    metrics = Metrics()
    processor = UsageProcessor(None, metrics, 4, clock=lambda: now[0])
    lying = {"prompt_tokens": -5, "completion_tokens": "many"}
    for _ in range(3):
        run(processor, response_messages(metadata(), lying))
    assert caplog.text.count("LLM responses not counted") == 1
    now[0] += 61
    run(processor, response_messages(metadata(), lying))
    assert "3 no_usage" in caplog.text.splitlines()[-1]  # (all since the last warning)
    assert metrics.llm_uncounted.labels("no_usage")._value.get() == 4
    full = UsageProcessor(None, metrics, 0, clock=lambda: now[0])  # no stream may be served
    run(full, response_messages(metadata(), {"prompt_tokens": 1, "completion_tokens": 1}))
    assert "1 too_many_streams" in caplog.text.splitlines()[-1]
