"""The ext_proc service (docs/llm.md#tokens-counted-from-responses) fed Envoy's messages
directly: what it charges, what it settles, and what it says when it cannot count (the real
Envoy: tests/integration)."""

from __future__ import annotations

import gzip
import json
from typing import Any

import fakeredis
import pytest
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as mode_pb
from envoy.service.accesslog.v3 import als_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc_pb
from google.protobuf import struct_pb2

from bench.llm_limits import response_messages
from extauthz.core.decision import Decision, Outcome
from extauthz.core.limits import TOKENS, Limited
from extauthz.core.llm import read_model_request
from extauthz.core.llm_usage import EDIT_FILTER_METADATA
from extauthz.core.token_limit import TokenLimit
from extauthz.runtime.ext_proc import EXT_AUTHZ_NAMESPACE, UsageProcessor
from extauthz.runtime.limiter import METADATA_KEY, Limiter
from extauthz.runtime.metrics import Metrics
from extauthz.runtime.tickets import TICKET_KEY, Tickets
from extauthz.runtime.usage import UsageMeter
from extauthz.runtime.usage_records import NAMESPACE as RECORDS_NAMESPACE
from extauthz.runtime.usage_records import UsageRecords
from extauthz.storage.client import DECODING
from extauthz.storage.store import Store

START = 1_800_000_000.0
LIMIT = Limited(TOKENS, "token:t1", TokenLimit(1000, "m"), "this token")


def metadata(**fields: str) -> Any:
    out = struct_pb2.Struct()
    out.update({"token_id": "t1", "route": "llm", "model": "m", **fields})
    return out


class Context:
    """What the servicer reads of gRPC's context: the stream's initial metadata."""

    def __init__(self, *metadata: tuple[str, str]) -> None:
        self.metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata


COUNTING = Context(("user-agent", "envoy"))
EDITING = Context(EDIT_FILTER_METADATA)


def run(processor: UsageProcessor, messages: Any) -> None:
    for _ in processor.Process(messages, COUNTING):
        pass


def edit(body: bytes, **pairs: object) -> str:
    """The decision's edit of `body` setting `pairs` (LlmRequest.splices)."""
    return read_model_request(body).splices(pairs.items())


def test_a_response_is_charged_and_its_reservation_settled(store: Store) -> None:
    limiter = Limiter(store)
    allowed = limiter.admit(
        Decision(Outcome.ALLOW, 200, "granted", limits=(LIMIT,), reserve=600), START
    )
    reserved = dict(allowed.metadata)[METADATA_KEY]
    meter = UsageMeter(store, flush_every=10**9)
    processor = UsageProcessor(meter, Metrics(), 4, clock=lambda: START, limiter=limiter)
    usage = {"prompt_tokens": 30, "completion_tokens": 70}
    run(processor, response_messages(metadata(**{METADATA_KEY: reserved}), usage, chunks=3))
    # 600 reserved, 100 used: 900 left in the window for this process
    again = Decision(Outcome.ALLOW, 200, "granted", limits=(LIMIT,), reserve=900)
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


ASK = {"stream_options": {"include_usage": True}}
STREAM = b'{"model": "m", "stream": true}'


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
        _request_headers({"model": "m", "edit": edit(body, **ASK), "strip_usage": "1"}),
        _body("request_body", body),
        _response_headers(b"200", b"text/event-stream"),
        _body("response_body", b'data: {"choices": [{"delta": {"content": "x"}}]}\n\n', False),
        _body("response_body", usage + b"data: [DONE]\n\n"),
    ]
    answers = list(processor.Process(iter(messages), EDITING))
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
    (answer,) = processor.Process(iter([_request_headers({"model": "m"})]), EDITING)
    assert answer.mode_override.request_body_mode == mode_pb.ProcessingMode.NONE
    assert answer.mode_override.response_body_mode == mode_pb.ProcessingMode.NONE
    # asked, but the reply is an error: its body is not read
    messages = [
        _request_headers(
            {"model": "m", "edit": edit(STREAM, **ASK), "strip_usage": "1"}, length=False
        ),
        _body("request_body", STREAM),
        _response_headers(b"429", b"application/json"),
    ]
    answers = list(processor.Process(iter(messages), EDITING))
    assert not answers[1].request_body.response.header_mutation.set_headers  # (was chunked)
    assert answers[2].mode_override.response_body_mode == mode_pb.ProcessingMode.NONE


@pytest.mark.parametrize("field", ["max_tokens", "max_output_tokens"])
def test_a_cap_is_set_as_the_decision_asks_and_the_response_let_go(field: str) -> None:
    processor = UsageProcessor(None, None, 4)
    body = b'{"model": "m", "' + field.encode() + b'": null}'
    path = "/v1/responses" if field == "max_output_tokens" else "/v1/chat/completions"
    spec = read_model_request(body, "POST", path).splices([(field, 64)])
    messages = [
        _request_headers({"model": "m", "edit": spec}),
        _body("request_body", body),
        _response_headers(b"200", b"application/json"),
    ]
    answers = list(processor.Process(iter(messages), EDITING))
    assert json.loads(answers[1].request_body.response.body_mutation.body) == {
        "model": "m",
        field: 64,
    }
    assert len(answers) == 2  # then a clean close: the response is not followed


def test_the_editing_filter_fails_closed() -> None:
    """A request whose cap or usage request cannot be set never reaches the model."""
    asked = [_request_headers({"model": "m", "edit": edit(STREAM, max_tokens=64)})]
    full = UsageProcessor(None, None, 0)  # no stream may be served
    (answer,) = full.Process(iter(asked), EDITING)
    assert answer.immediate_response.status.code == 503
    assert json.loads(answer.immediate_response.body)["error"] == "counting_unavailable"
    processor = UsageProcessor(None, None, 4)
    answers = list(processor.Process(iter([*asked, _body("request_body", b"[1]")]), EDITING))
    assert answers[-1].immediate_response.status.code == 503
    # no room to follow its response: refused before the model, even with nothing to set
    (answer,) = full.Process(iter([_request_headers({"model": "m"})]), EDITING)
    assert answer.immediate_response.status.code == 503
    (answer,) = UsageProcessor(None, None, 1).Process(
        iter([_request_headers({"model": "m"})]), EDITING
    )
    assert answer.immediate_response.status.code == 503  # (its count needs one, the edit one)
    # no model (GET /v1/models): nothing to count, let go at the headers
    (answer,) = full.Process(iter([_request_headers({"route": "llm"})]), EDITING)
    assert answer.mode_override.response_body_mode == mode_pb.ProcessingMode.NONE


def test_any_processing_mode_counts(store: Store) -> None:
    """A counting filter as gateways write it: not observability mode (every message is
    answered), request headers sent or skipped; never taken for the editing filter."""
    meter = UsageMeter(store, flush_every=10**9)
    processor = UsageProcessor(meter, None, 4, clock=lambda: START)
    usage = {"prompt_tokens": 3, "completion_tokens": 4}
    for with_request_headers in (True, False):
        messages = list(response_messages(metadata(), usage, chunks=2))
        for message in messages:
            message.observability_mode = False
        if with_request_headers:
            messages.insert(0, _request_headers({"model": "m", "token_id": "t1"}))
        answers = list(processor.Process(iter(messages), COUNTING))
        assert len(answers) == len(messages)  # (Envoy waits for each)
        assert all(not a.HasField("mode_override") for a in answers)
    meter.flush()
    day = store.llm_token_usage("t1", [int(START // 86400)])[0]
    assert day == {"m": {"prompt_tokens": 6, "completion_tokens": 8}}


def _reserved(limiter: Limiter, reserve: int = 600) -> str:
    allowed = limiter.admit(
        Decision(Outcome.ALLOW, 200, "granted", limits=(LIMIT,), reserve=reserve), START
    )
    return str(dict(allowed.metadata)[METADATA_KEY])


def _sse_messages(fields: Any, *events: object) -> list[Any]:
    head = ext_proc_pb.ProcessingRequest(observability_mode=True)
    head.metadata_context.filter_metadata[EXT_AUTHZ_NAMESPACE].CopyFrom(fields)
    head.response_headers.headers.headers.add(key=":status", raw_value=b"200")
    head.response_headers.headers.headers.add(key="content-type", raw_value=b"text/event-stream")
    body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    tail = ext_proc_pb.ProcessingRequest(observability_mode=True)
    tail.response_body.body = body
    tail.response_body.end_of_stream = True
    return [head, tail]


def test_a_stream_without_a_usage_chunk_keeps_its_whole_reservation(store: Store) -> None:
    """Chunks counted are an estimate (a metric), never the charge."""
    limiter = Limiter(store)
    fields = metadata(**{METADATA_KEY: _reserved(limiter)})
    content = {"choices": [{"index": 0, "delta": {"content": "word"}}]}
    run(UsageProcessor(None, None, 4, clock=lambda: START, limiter=limiter),
        iter(_sse_messages(fields, content, content, content)))  # fmt: skip
    again = Decision(Outcome.ALLOW, 200, "granted", limits=(LIMIT,), reserve=401)
    assert limiter.admit(again, START + 1).status == 429  # the 600 stay taken


@pytest.mark.parametrize("streamed", [False, True])
def test_responses_api_usage_is_charged(store: Store, streamed: bool) -> None:
    limiter = Limiter(store)
    meter = UsageMeter(store, flush_every=10**9)
    fields = metadata(**{METADATA_KEY: _reserved(limiter)})
    usage = {
        "input_tokens": 50,
        "output_tokens": 70,
        "input_tokens_details": {"cached_tokens": 20},
        "output_tokens_details": {"reasoning_tokens": 30},
    }
    processor = UsageProcessor(meter, None, 4, clock=lambda: START, limiter=limiter)
    if streamed:
        created = {"type": "response.created", "response": {"usage": None}}
        delta = {"type": "response.output_text.delta", "delta": "hi"}
        done = {"type": "response.completed", "response": {"id": "r", "usage": usage}}
        run(processor, iter(_sse_messages(fields, created, delta, done)))
    else:
        run(processor, response_messages(fields, usage))
    # 600 reserved, 120 used: 880 left for this process
    again = Decision(Outcome.ALLOW, 200, "granted", limits=(LIMIT,), reserve=880)
    assert limiter.admit(again, START + 1).outcome is Outcome.ALLOW
    meter.flush()
    day = store.llm_token_usage("t1", [int(START // 86400)])[0]
    assert day == {
        "m": {
            "prompt_tokens": 50,
            "completion_tokens": 70,
            "cached_prompt_tokens": 20,
            "reasoning_tokens": 30,
        }
    }


def test_a_gzip_response_is_not_counted_and_keeps_its_reservation(store: Store) -> None:
    limiter = Limiter(store)
    allowed = limiter.admit(
        Decision(Outcome.ALLOW, 200, "granted", limits=(LIMIT,), reserve=600), START
    )
    metrics = Metrics()
    processor = UsageProcessor(None, metrics, 4, clock=lambda: START, limiter=limiter)
    fields = metadata(**{METADATA_KEY: dict(allowed.metadata)[METADATA_KEY]})
    messages = list(response_messages(fields, {"prompt_tokens": 1, "completion_tokens": 1}))
    messages[1].response_body.body = gzip.compress(messages[1].response_body.body)
    run(processor, iter(messages))
    assert metrics.llm_uncounted.labels("no_usage")._value.get() == 1
    # the 600 stay taken: only 400 are left for this window
    again = Decision(Outcome.ALLOW, 200, "granted", limits=(LIMIT,), reserve=401)
    assert limiter.admit(again, START + 1).status == 429


def test_a_denial_passing_the_editing_filter_is_answered_in_kind() -> None:
    """ext_authz's local reply (a 403) reaches the editing filter as response headers: the
    answer must be a response-headers one (any other is an error, and the filter fails
    closed)."""
    processor = UsageProcessor(None, None, 0)
    denied = _response_headers(b"403", b"application/json")
    (answer,) = processor.Process(iter([denied]), EDITING)
    assert answer.WhichOneof("response") == "response_headers"


# --- one record per response: Envoy's Lua filter and access log (usage_records) ----------


def _record(authz: dict[str, str], found: dict[str, str], status: int = 200) -> Any:
    entry = accesslog_pb2.HTTPAccessLogEntry()
    metadata = entry.common_properties.metadata.filter_metadata
    metadata[EXT_AUTHZ_NAMESPACE].update(authz)
    if found:
        metadata[RECORDS_NAMESPACE].update(found)
    entry.response.response_code.value = status
    message = als_pb2.StreamAccessLogsMessage()
    message.http_logs.log_entry.append(entry)
    return message


def test_a_record_is_charged_and_its_reservation_settled(store: Store) -> None:
    limiter = Limiter(store)
    meter = UsageMeter(store, flush_every=10**9)
    processor = UsageProcessor(meter, None, 4, clock=lambda: START, limiter=limiter)
    records = UsageRecords(processor)
    authz = {"token_id": "t1", "route": "llm", "model": "m", METADATA_KEY: _reserved(limiter)}
    usage = (
        '{"prompt_tokens":30,"completion_tokens":70,"prompt_tokens_details":{"cached_tokens":9}}'
    )
    records.StreamAccessLogs(
        iter(
            [
                _record(authz, {"v": "1", "usage": usage, "complete": "1"}),
                _record({"route": "plain"}, {}),  # (not an LLM response: passed over)
                _record({**authz, "model": ""}, {"v": "1"}),
            ]
        ),
        None,
    )
    again = Decision(Outcome.ALLOW, 200, "granted", limits=(LIMIT,), reserve=900)
    assert limiter.admit(again, START + 1).outcome is Outcome.ALLOW  # 600 reserved, 100 used
    meter.flush()
    day = store.llm_token_usage("t1", [int(START // 86400)])[0]
    assert day == {"m": {"prompt_tokens": 30, "completion_tokens": 70, "cached_prompt_tokens": 9}}


@pytest.mark.parametrize(
    "found",
    [
        {"v": "1", "complete": "1", "content_events": "40"},  # a stream that hid its usage
        {"v": "1", "unread": "content-encoding"},
        {"v": "1"},  # the client went away before the usage passed
        {"v": "1", "usage": '{"prompt_tokens": -5, "completion_tokens": 1}', "complete": "1"},
        {"v": "1", "usage": "{" * 5000, "complete": "1"},
        {"v": "1", "usage": "not json", "complete": "1"},
    ],
)
def test_a_record_without_a_usage_keeps_the_whole_reservation(
    store: Store, found: dict[str, str]
) -> None:
    limiter = Limiter(store)
    processor = UsageProcessor(None, Metrics(), 4, clock=lambda: START, limiter=limiter)
    authz = {"token_id": "t1", "route": "llm", "model": "m", METADATA_KEY: _reserved(limiter)}
    UsageRecords(processor).StreamAccessLogs(iter([_record(authz, found)]), None)
    again = Decision(Outcome.ALLOW, 200, "granted", limits=(LIMIT,), reserve=401)
    assert limiter.admit(again, START + 1).status == 429  # the 600 stay taken


@pytest.mark.parametrize(("status", "given_back"), [(400, True), (429, True), (408, False),
                                                   (500, False), (504, False), (0, False)])  # fmt: skip
def test_a_refusal_gives_the_reservation_back_a_failure_keeps_it(
    store: Store, status: int, given_back: bool
) -> None:
    """A 4xx refused the request before the model; a 5xx, a 408 or no status at all (the
    client went away first) may have cost the model all the same."""
    limiter = Limiter(store)
    processor = UsageProcessor(None, None, 4, clock=lambda: START, limiter=limiter)
    authz = {"token_id": "t1", "route": "llm", "model": "m", METADATA_KEY: _reserved(limiter)}
    UsageRecords(processor).StreamAccessLogs(iter([_record(authz, {"v": "1"}, status)]), None)
    again = Decision(Outcome.ALLOW, 200, "granted", limits=(LIMIT,), reserve=1000)
    assert (limiter.admit(again, START + 1).outcome is Outcome.ALLOW) is given_back


def _signed(tickets: Tickets, authz: dict[str, str]) -> dict[str, str]:
    ticket = tickets.sign(
        authz["token_id"], authz["route"], authz["model"], authz.get(METADATA_KEY, "")
    )
    assert ticket is not None and ticket.startswith("v2:")
    return {**authz, TICKET_KEY: ticket}


def test_only_records_of_this_deployments_allows_are_counted(store: Store) -> None:
    """Whoever reaches the Check port cannot settle reservations or charge usage of its
    own: a record must carry the ticket the allow was signed with, over what it names."""
    limiter = Limiter(store)
    meter = UsageMeter(store, flush_every=10**9)
    tickets = Tickets(store)
    processor = UsageProcessor(
        meter, Metrics(), 4, clock=lambda: START, limiter=limiter, tickets=tickets
    )
    records = UsageRecords(processor)
    authz = {"token_id": "t1", "route": "llm", "model": "m", METADATA_KEY: _reserved(limiter)}
    usage = {"v": "1", "usage": '{"prompt_tokens":1,"completion_tokens":1}', "complete": "1"}
    signed = _signed(tickets, authz)
    forged = [
        authz,  # no ticket
        {**signed, "token_id": "t2"},  # charged to another token
        {**signed, "model": "other"},
        {**signed, METADATA_KEY: signed[METADATA_KEY].replace("600", "999999")},  # credit
        {**signed, TICKET_KEY: "v1:" + "0" * 64},
        _signed(Tickets(_other_store()), authz),  # another deployment's key
    ]
    claims = processor.claims
    assert claims is not None
    records.StreamAccessLogs(iter([_record(f, usage) for f in forged]), None)
    assert claims.drain()
    meter.flush()
    assert store.llm_token_usage("t1", [int(START // 86400)])[0] == {}
    assert store.llm_token_usage("t2", [int(START // 86400)])[0] == {}
    again = Decision(Outcome.ALLOW, 200, "granted", limits=(LIMIT,), reserve=401)
    assert limiter.admit(again, START + 1).status == 429  # nothing was given back
    records.StreamAccessLogs(iter([_record(signed, usage)]), None)  # the real one counts
    assert claims.drain()
    assert limiter.admit(again, START + 1).outcome is Outcome.ALLOW
    # sent again (a refusal: its reservation would come back whole): counted once only
    records.StreamAccessLogs(iter([_record(signed, usage, 400)] * 3), None)
    assert claims.drain()
    assert limiter.admit(again, START + 1).status == 429  # (nothing more given back)
    meter.flush()
    charged = store.llm_token_usage("t1", [int(START // 86400)])[0]
    assert charged == {"m": {"prompt_tokens": 1, "completion_tokens": 1}}
    # (the second tickets object of this deployment reads the same key from Redis)
    nonce = Tickets(store).verified("t1", "llm", "m", authz[METADATA_KEY], signed[TICKET_KEY])
    assert nonce is not None


def _other_store() -> Store:
    return Store(fakeredis.FakeRedis(**DECODING), "extauthz:")
