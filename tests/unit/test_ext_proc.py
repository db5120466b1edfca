"""The ext_proc service (issue #25) fed Envoy's messages directly: what it charges, what it
settles, and what it says when it cannot count (the real Envoy: tests/integration)."""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as mode_pb
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc_pb
from google.protobuf import struct_pb2

from bench.llm_limits import response_messages
from extauthz.core.decision import Decision, Outcome
from extauthz.core.token_limit import TokenLimit, TokenLimited
from extauthz.runtime.ext_proc import EXT_AUTHZ_NAMESPACE, UsageProcessor
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


def _request_headers(fields: dict[str, str], length: bool = True) -> Any:
    message = ext_proc_pb.ProcessingRequest()
    message.metadata_context.filter_metadata[EXT_AUTHZ_NAMESPACE].update(fields)
    headers = message.request_headers.headers.headers
    headers.add(key=":method", raw_value=b"POST")
    if length:
        headers.add(key="content-length", raw_value=b"40")
    return message


def _body(kind: str, data: bytes, last: bool = True) -> Any:
    message = ext_proc_pb.ProcessingRequest()
    getattr(message, kind).body = data
    getattr(message, kind).end_of_stream = last
    return message


def _response_headers(status: bytes, content_type: bytes) -> Any:
    message = ext_proc_pb.ProcessingRequest()
    headers = message.response_headers.headers.headers
    headers.add(key=":status", raw_value=status)
    headers.add(key="content-type", raw_value=content_type)
    return message


def test_a_stream_is_asked_for_its_usage_and_the_reply_does_not_show_it() -> None:
    processor = UsageProcessor(None, None, 4)
    body = b'{"model": "m", "stream": true}'
    usage = b'data: {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}}\n\n'
    messages = [
        _request_headers({"model": "m", "stream_usage": "add"}),
        _body("request_body", body),
        _response_headers(b"200", b"text/event-stream"),
        _body("response_body", b'data: {"choices": [{"delta": {"content": "x"}}]}\n\n', False),
        _body("response_body", usage + b"data: [DONE]\n\n"),
    ]
    answers = list(processor.Process(iter(messages), None))
    assert [a.WhichOneof("response") for a in answers] == [
        "request_headers", "request_body", "response_headers", "response_body", "response_body",
    ]  # fmt: skip
    asked = answers[1].request_body.response
    assert json.loads(asked.body_mutation.body)["stream_options"] == {"include_usage": True}
    (length,) = asked.header_mutation.set_headers
    assert length.header.raw_value == str(len(asked.body_mutation.body)).encode()
    assert answers[2].response_headers.response.header_mutation.remove_headers == ["content-length"]
    assert not answers[3].response_body.response.HasField("body_mutation")  # passed as it was
    assert answers[4].response_body.response.body_mutation.body == b"data: [DONE]\n\n"


def test_other_requests_are_let_go_at_their_headers() -> None:
    processor = UsageProcessor(None, None, 4)
    (answer,) = processor.Process(iter([_request_headers({"model": "m"})]), None)
    assert answer.mode_override.request_body_mode == mode_pb.ProcessingMode.NONE
    assert answer.mode_override.response_body_mode == mode_pb.ProcessingMode.NONE
    # asked, but the reply is an error: its body is not read
    messages = [
        _request_headers({"model": "m", "stream_usage": "add"}, length=False),
        _body("request_body", b'{"model": "m", "stream": true}'),
        _response_headers(b"429", b"application/json"),
    ]
    answers = list(processor.Process(iter(messages), None))
    assert not answers[1].request_body.response.header_mutation.set_headers  # (was chunked)
    assert answers[2].mode_override.response_body_mode == mode_pb.ProcessingMode.NONE


@pytest.mark.parametrize(
    ("path", "field"),
    [("/v1/chat/completions", "max_tokens"), ("/v1/responses", "max_output_tokens")],
)
def test_a_route_default_cap_is_added_under_the_name_the_api_reads(path: str, field: str) -> None:
    processor = UsageProcessor(None, None, 4)
    headers = _request_headers({"model": "m", "add_max_tokens": "64"})
    headers.request_headers.headers.headers.add(key=":path", raw_value=path.encode())
    messages = [
        headers,
        _body("request_body", b'{"model": "m"}'),
        _response_headers(b"200", b"application/json"),
    ]
    answers = list(processor.Process(iter(messages), None))
    assert json.loads(answers[1].request_body.response.body_mutation.body) == {
        field: 64,
        "model": "m",
    }
    assert answers[2].mode_override.response_body_mode == mode_pb.ProcessingMode.NONE  # no strip


def test_a_gzip_response_is_not_counted_and_keeps_its_reservation(store: Store) -> None:
    limiter = TokenLimiter(store)
    allowed = limiter.admit(
        Decision(Outcome.ALLOW, 200, "granted", token_limits=(LIMIT,), reserve=600), START
    )
    metrics = Metrics()
    processor = UsageProcessor(None, metrics, 4, clock=lambda: START, token_limiter=limiter)
    fields = metadata(**{METADATA_KEY: dict(allowed.metadata)[METADATA_KEY]})
    messages = list(response_messages(fields, {"prompt_tokens": 1, "completion_tokens": 1}))
    messages[1].response_body.body = gzip.compress(messages[1].response_body.body)
    run(processor, iter(messages))
    assert metrics.llm_uncounted.labels("no_usage")._value.get() == 1
    # the 600 stay taken: only 400 are left for this window
    again = Decision(Outcome.ALLOW, 200, "granted", token_limits=(LIMIT,), reserve=401)
    assert limiter.admit(again, START + 1).status == 429
