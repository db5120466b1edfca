"""Traces (docs/operations.md#traces): the spans of a Check and of a charged LLM response, their
attributes (never a secret), their parent (the traceparent Envoy sends, then the Check's own
in the LLM allow's metadata), made under a sampled parent only: an unsampled, missing or bad
traceparent means no span, never an error. The endpoint flag's values; nothing of
OpenTelemetry's SDK is imported without it."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from extauthz.admin import tokens
from extauthz.admin.sync import sync
from extauthz.config import (
    OtlpTarget,
    Settings,
    SpanBatching,
    load_settings,
    otlp_target,
    span_batching,
)
from extauthz.core.decision import RequestFacts
from extauthz.core.llm import read_model_request
from extauthz.core.llm_usage import Usage
from extauthz.core.policy import parse_policy
from extauthz.dev.envoy_config import (
    OTEL_CLUSTER,
    OTEL_TRACER,
    bootstrap,
    http_managers,
    loopback_ports,
    with_tracing,
)
from extauthz.errors import ConfigError
from extauthz.runtime.authorizer import Authorizer
from extauthz.runtime.envoy_check import CheckResponse
from extauthz.runtime.ext_proc import UsageProcessor
from extauthz.runtime.tracing import TRACE_KEY, Tracing, credential_kind, sampled
from extauthz.runtime.usage_records import UsageRecords
from extauthz.storage.store import Store
from tests.unit.test_ext_proc import _record

POLICY = """version: 1
routes:
  llm: {access: protected, api: openai}
  m: {access: protected}
  open: {access: public}
"""
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
SAMPLED = f"00-{TRACE_ID}-{PARENT_ID}-01"
UNSAMPLED = f"00-{TRACE_ID}-{PARENT_ID}-00"
BODY = b'{"model": "demo-small", "messages": [{"role": "user", "content": "hi"}]}'


class Context:
    """What the handler reads of gRPC's context: the call's metadata."""

    def __init__(self, *metadata: tuple[str, str]) -> None:
        self.metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata


@pytest.fixture
def exported() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracing(exported: InMemorySpanExporter) -> Iterator[Tracing]:
    made = Tracing(otlp_target("127.0.0.1:4317"), exporter=exported)
    yield made
    made.shutdown()


@pytest.fixture
def authorizer(store: Store) -> Authorizer:
    sync(store, parse_policy(POLICY))
    made = Authorizer(store)
    made.refresh_policy()
    return made


def spans(tracing: Tracing, exported: InMemorySpanExporter) -> list[Any]:
    tracing.provider.force_flush()
    return list(exported.get_finished_spans())


def llm_facts(token: str) -> RequestFacts:
    return RequestFacts("llm", authorization=f"Bearer {token}", llm=read_model_request(BODY))


def test_a_checks_span_continues_envoys_and_says_what_was_decided(
    tracing: Tracing, exported: InMemorySpanExporter, authorizer: Authorizer, store: Store
) -> None:
    issued = tokens.create(store, ["llm"], now=time.time())
    check = tracing.check_handler(authorizer)
    data = check((llm_facts(issued.token), {}, None), Context(("traceparent", SAMPLED)))
    (span,) = spans(tracing, exported)
    assert span.name == "extauthz.check"
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.parent is not None and format(span.parent.span_id, "016x") == PARENT_ID
    assert dict(span.attributes) == {
        "extauthz.route": "llm",
        "extauthz.decision": "allow",
        "extauthz.status": 200,
        "extauthz.reason": "granted",
        "extauthz.credential_kind": "bearer",
        "extauthz.token_id": issued.record.id,
        "extauthz.subject": issued.record.id,
        "gen_ai.request.model": "demo-small",
    }
    # the allow carries the span's own traceparent, beside the decision's metadata
    metadata = dict(CheckResponse.FromString(data).dynamic_metadata)
    assert metadata[TRACE_KEY] == f"00-{TRACE_ID}-{span.context.span_id:016x}-01"
    assert metadata["token_id"] == issued.record.id and metadata["model"] == "demo-small"


@pytest.mark.parametrize(
    ("facts", "decision", "status", "reason", "kind"),
    [
        (RequestFacts("m"), "deny", 401, "no_credential", "none"),
        (
            RequestFacts("m", authorization="Bearer eat_nope"),
            "deny",
            401,
            "unknown_token",
            "bearer",
        ),
        (RequestFacts("m", authorization="Basic dTpw"), "deny", 401, "unsupported_scheme", "basic"),
        (RequestFacts("m", authorization="Digest x=1"), "deny", 401, "unsupported_scheme", "other"),
        (RequestFacts("nowhere"), "deny", 404, "unknown_route", "none"),
        (RequestFacts("open"), "allow", 200, "public", "none"),
    ],
)
def test_denials_and_public_allows_have_spans_without_a_traceparent_in_their_answer(
    tracing: Tracing,
    exported: InMemorySpanExporter,
    authorizer: Authorizer,
    facts: RequestFacts,
    decision: str,
    status: int,
    reason: str,
    kind: str,
) -> None:
    data = tracing.check_handler(authorizer)((facts, {}, None), Context(("traceparent", SAMPLED)))
    (span,) = spans(tracing, exported)
    assert span.parent is not None and format(span.parent.span_id, "016x") == PARENT_ID
    attributes = dict(span.attributes)
    assert (attributes["extauthz.decision"], attributes["extauthz.status"]) == (decision, status)
    assert (attributes["extauthz.reason"], attributes["extauthz.credential_kind"]) == (reason, kind)
    assert attributes["extauthz.route"] == facts.route
    assert TRACE_KEY not in CheckResponse.FromString(data).dynamic_metadata  # (not an LLM allow)


def test_no_secret_in_any_attribute(
    tracing: Tracing, exported: InMemorySpanExporter, authorizer: Authorizer, store: Store
) -> None:
    issued = tokens.create(store, ["llm"], now=time.time(), name="team-a")
    check = tracing.check_handler(authorizer)
    for facts in (
        llm_facts(issued.token),
        RequestFacts("m", authorization=f"Bearer {issued.token}"),  # 403: not its route
        RequestFacts("m", authorization=f"Bearer {issued.token}x"),  # 401
        RequestFacts("m", authorization=f"Basic {issued.token}"),  # malformed
    ):
        check((facts, {"x-request-id": "r1"}, None), Context(("traceparent", SAMPLED)))
    found = spans(tracing, exported)
    assert len(found) == 4
    secret = issued.token.removeprefix("eat_")
    for span in found:
        for value in span.attributes.values():
            assert secret[:16] not in str(value)


def test_an_unsampled_parent_means_no_span_for_the_check_nor_its_response(
    tracing: Tracing, exported: InMemorySpanExporter, authorizer: Authorizer, store: Store
) -> None:
    issued = tokens.create(store, ["llm"], now=time.time())
    check = tracing.check_handler(authorizer)
    for context in (Context(("traceparent", UNSAMPLED)), Context()):
        data = check((llm_facts(issued.token), {}, None), context)
        assert CheckResponse.FromString(data).dynamic_metadata["model"] == "demo-small"
        assert TRACE_KEY not in CheckResponse.FromString(data).dynamic_metadata
    tracing.charged(UNSAMPLED, issued.record.id, "llm", "demo-small", 200, Usage(3, 4))
    tracing.charged("", issued.record.id, "llm", "demo-small", 200, Usage(3, 4))
    assert spans(tracing, exported) == []


@pytest.mark.parametrize(
    ("traceparent", "is_sampled"),
    [
        (SAMPLED, True),
        (f"00-{TRACE_ID}-{PARENT_ID}-03", True),  # (more flags than sampled)
        (UNSAMPLED, False),
        (f"00-{TRACE_ID}-{PARENT_ID}-02", False),
    ],
)
def test_the_sampled_flag_decides(traceparent: str, is_sampled: bool) -> None:
    assert sampled(traceparent) is is_sampled


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "garbage",
        f"00-{'0' * 32}-{PARENT_ID}-01",  # an all-zero trace id
        f"00-{TRACE_ID}-{'0' * 16}-01",  # an all-zero span id
        f"ff-{TRACE_ID}-{PARENT_ID}-01",  # the version that is never valid
        f"00-{TRACE_ID.upper()}-{PARENT_ID}-01",  # upper-case hex
        f"00-{TRACE_ID[:-1]}-{PARENT_ID}-01",  # too short
        f"00-{TRACE_ID}-{PARENT_ID}-01-extra",  # version 00 has no more fields
        f"00-{TRACE_ID}-{PARENT_ID}-0g",
        f"01-{TRACE_ID}-{PARENT_ID}-01",  # another version (Envoy sends 00)
        " " + SAMPLED,
        SAMPLED + " " * 300,  # too long
        "00-" + "é" * 32 + f"-{PARENT_ID}-01",  # not ASCII
        f"00-{TRACE_ID}\r\n-{PARENT_ID}-01",  # control characters
        "-".join(["00"] * 10_000),  # huge
    ],
)
def test_a_bad_traceparent_means_no_span_and_no_error(
    tracing: Tracing, exported: InMemorySpanExporter, authorizer: Authorizer, bad: str
) -> None:
    """Envoy sends none for a request it does not trace (a client's malformed traceparent
    among them): a client never decides what extauthz traces."""
    assert not sampled(bad)
    check = tracing.check_handler(authorizer)
    data = check((llm_facts("eat_x"), {}, None), Context(("traceparent", bad)))
    assert CheckResponse.FromString(data).denied_response.status.code == 401
    check((RequestFacts("open"), {}, None), Context(("traceparent", bad)))
    tracing.charged(bad, "t1", "llm", "m", 200, Usage(1, 2))
    assert spans(tracing, exported) == []


def test_a_charged_response_has_a_usage_span_in_the_checks_trace(
    tracing: Tracing, exported: InMemorySpanExporter
) -> None:
    tracing.charged(SAMPLED, "t1", "llm", "demo-small", 200, Usage(30, 70))
    tracing.charged(SAMPLED, "", "llm", "demo-small", 200, Usage(0, 9, estimated=True))
    charged, estimated = spans(tracing, exported)
    assert charged.name == "extauthz.llm.usage"
    assert format(charged.context.trace_id, "032x") == TRACE_ID
    assert charged.parent is not None and format(charged.parent.span_id, "016x") == PARENT_ID
    assert dict(charged.attributes) == {
        "extauthz.route": "llm",
        "extauthz.token_id": "t1",
        "gen_ai.request.model": "demo-small",
        "http.response.status_code": 200,
        "gen_ai.usage.input_tokens": 30,
        "gen_ai.usage.output_tokens": 70,
    }
    assert estimated.attributes["extauthz.usage_estimated"] is True
    assert "extauthz.token_id" not in estimated.attributes


def test_the_processor_reports_charged_responses_only() -> None:
    seen: list[tuple[Any, ...]] = []
    processor = UsageProcessor(None, None, 4)
    processor.on_charge = lambda *args: seen.append(args)
    processor.charge("t1", "llm", "m", "", 200, Usage(1, 2), trace=SAMPLED)
    processor.charge("t1", "llm", "m", "", 500, Usage(1, 2), trace=SAMPLED)  # (not charged)
    processor.charge("t1", "llm", "m", "", 200, None, trace=SAMPLED)  # (no usage read)
    assert seen == [(SAMPLED, "t1", "llm", "m", 200, Usage(1, 2))]
    # from the access log: the traceparent ext_authz's metadata carries
    seen.clear()
    authz = {"token_id": "t1", "route": "llm", "model": "m", TRACE_KEY: SAMPLED}
    usage = '{"prompt_tokens": 3, "completion_tokens": 4}'
    UsageRecords(processor).StreamAccessLogs(
        iter([_record(authz, {"v": "1", "usage": usage, "complete": "1"})]), None
    )
    assert seen == [(SAMPLED, "t1", "llm", "m", 200, Usage(3, 4))]


@pytest.mark.parametrize(
    ("authorization", "reason", "kind"),
    [
        (None, "no_credential", "none"),
        ("Bearer abc", "granted", "bearer"),
        ("bearer abc", "unknown_token", "bearer"),
        ("Bearer a.b.c", "granted_jwt", "jwt"),
        ("Bearer a.b.c", "invalid_jwt", "jwt"),
        ("Basic dTpw", "granted", "basic"),
        ("Negotiate abc", "unsupported_scheme", "other"),
        ("", "malformed_credential", "other"),
    ],
)
def test_credential_kinds(authorization: str | None, reason: str, kind: str) -> None:
    assert credential_kind(authorization, reason) == kind


@pytest.mark.parametrize(
    ("text", "target"),
    [
        ("127.0.0.1:4317", OtlpTarget("grpc", "127.0.0.1", 4317, False)),
        ("grpc://collector:4317", OtlpTarget("grpc", "collector", 4317, False)),
        ("grpcs://collector.example", OtlpTarget("grpc", "collector.example", 4317, True)),
        ("http://[::1]:4318", OtlpTarget("http", "::1", 4318, False, "/v1/traces")),
        ("https://c.example/v1/traces", OtlpTarget("http", "c.example", 443, True, "/v1/traces")),
        ("HTTP://C:80/otlp/v1/traces/", OtlpTarget("http", "c", 80, False, "/otlp/v1/traces")),
    ],
)
def test_otlp_endpoints(text: str, target: OtlpTarget) -> None:
    assert otlp_target(text) == target
    assert load_settings({"otlp_endpoint": text}, env={}).otlp_endpoint == text


@pytest.mark.parametrize(
    "bad",
    [
        "collector",
        ":4317",
        "collector:0",
        "collector:65536",
        "ftp://collector",
        "grpc://collector/v1/traces",
        "http://collector:4318/v1/traces?x=1",
        "http://collector#x",
        "http://[::1",
        "http://",
        "http://collector:port",
        "grpc:// collector",
        "http://c\x1b[31m:4318",
    ],
)
def test_bad_otlp_endpoints_are_one_line_errors(bad: str) -> None:
    with pytest.raises(ConfigError, match="--otlp-endpoint") as error:
        load_settings({"otlp_endpoint": bad}, env={})
    assert "\n" not in str(error.value) and "\x1b" not in str(error.value)


def test_a_password_in_the_endpoint_is_refused_and_not_echoed() -> None:
    with pytest.raises(ConfigError) as error:
        load_settings({"otlp_endpoint": "https://user:hunter2@c.example/v1/traces"}, env={})
    assert "hunter2" not in str(error.value)
    assert Settings().otlp_endpoint == ""


def test_envoy_traces_the_listeners_that_run_ext_authz() -> None:
    config = bootstrap(loopback_ports(20000))
    for text, service in [
        ("127.0.0.1:4317", "grpc_service"),
        ("https://collector.example/v1/traces", "http_service"),
    ]:
        traced = with_tracing(config, otlp_target(text))
        managers = {m["stat_prefix"]: m for m in http_managers(traced)}
        assert {name for name, m in managers.items() if "tracing" in m} == {"external", "internal"}
        provider = managers["external"]["tracing"]["provider"]
        assert provider["name"] == OTEL_TRACER
        assert service in provider["typed_config"]
        (cluster,) = [
            c for c in traced["static_resources"]["clusters"] if c["name"] == OTEL_CLUSTER
        ]
        assert ("transport_socket" in cluster) == text.startswith("https")
    assert "tracing" not in str(config)  # (a copy: the config given is unchanged)


def test_a_client_cannot_decide_what_envoy_traces() -> None:
    """On the external listener Envoy removes a client's trace context, x-client-trace-id
    and x-request-id before it decides whether to trace (each would let a client force a
    trace, stop one, or choose its trace id: tests/integration/test_traces_e2e.py sends
    them); x-client-trace-id forces none anywhere."""
    traced = with_tracing(bootstrap(loopback_ports(20000)), otlp_target("127.0.0.1:4317"))
    managers = {m["stat_prefix"]: m for m in http_managers(traced)}
    (early,) = managers["external"]["early_header_mutation_extensions"]
    removed = {m["remove"] for m in early["typed_config"]["mutations"]}
    assert removed == {"traceparent", "tracestate", "x-client-trace-id", "x-request-id"}
    assert "early_header_mutation_extensions" not in managers["internal"]
    for name in ("external", "internal"):
        assert managers[name]["tracing"]["client_sampling"] == {"value": 0}


def test_no_opentelemetry_sdk_without_the_flag() -> None:
    """The CLI and the server import none of the SDK's tracing, nor an exporter (they are
    imported when the flag is given; redis-py imports the SDK's metrics of its own)."""
    code = (
        "import sys, extauthz.cli, extauthz.runtime.server, extauthz.dev.envoy_config\n"
        "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk.trace', "
        "'opentelemetry.exporter', 'opentelemetry.trace.propagation.tracecontext'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_spans_reach_a_collector_over_otlp(protocol: str) -> None:
    """The real exporters, to receivers written here on 127.0.0.1: OTLP/HTTP (protobuf
    posted to /v1/traces) and OTLP/gRPC (the TraceService)."""
    import threading
    from concurrent import futures
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    received: list[Any] = []
    Request = trace_service_pb2.ExportTraceServiceRequest

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            received.append((self.path, self.headers["content-type"], Request.FromString(body)))
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.end_headers()
            self.wfile.write(trace_service_pb2.ExportTraceServiceResponse().SerializeToString())

        def log_message(self, *args: Any) -> None:
            pass

    class Service(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:
            received.append(("Export", "grpc", request))
            return trace_service_pb2.ExportTraceServiceResponse()

    if protocol == "http":
        server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        endpoint, stop = f"http://127.0.0.1:{server.server_port}", server.shutdown
    else:
        grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), grpc_server)  # type: ignore[no-untyped-call]
        endpoint = f"127.0.0.1:{grpc_server.add_insecure_port('127.0.0.1:0')}"
        grpc_server.start()
        stop = lambda: grpc_server.stop(0)  # noqa: E731
    try:
        tracing = Tracing(otlp_target(endpoint))
        tracing.charged(SAMPLED, "t1", "llm", "demo-small", 200, Usage(30, 70))
        tracing.shutdown()  # (exports what is left)
    finally:
        stop()
    ((path, kind, request),) = received
    assert (path, kind) == (
        ("/v1/traces", "application/x-protobuf") if protocol == "http" else ("Export", "grpc")
    )
    (resource,) = request.resource_spans
    service = {a.key: a.value.string_value for a in resource.resource.attributes}
    assert service["service.name"] == "extauthz"
    (span,) = resource.scope_spans[0].spans
    assert span.name == "extauthz.llm.usage" and span.trace_id.hex() == TRACE_ID
    assert span.parent_span_id.hex() == PARENT_ID
    tokens_used = {
        a.key: a.value.int_value for a in span.attributes if a.key.startswith("gen_ai.usage")
    }
    assert tokens_used == {"gen_ai.usage.input_tokens": 30, "gen_ai.usage.output_tokens": 70}


class _Stuck:
    """A collector that never answers (until let go), then fails or succeeds."""

    def __init__(self, result: Any) -> None:
        self.result = result
        self.release = threading.Event()
        self.exported: list[Any] = []

    def export(self, batch: Any) -> Any:
        self.release.wait(10)
        if isinstance(self.result, Exception):
            raise self.result
        self.exported.extend(batch)
        return self.result

    def shutdown(self) -> None:
        self.release.set()


def _ended_spans(tracing: Tracing, n: int) -> float:
    """End `n` spans (children of a sampled parent); the most seconds one took to end."""
    parent = tracing.parent("00-" + "1" * 32 + "-" + "2" * 16 + "-01")
    slowest = 0.0
    for _ in range(n):
        span = tracing.tracer.start_span("x", parent)
        started = time.perf_counter()
        span.end()
        slowest = max(slowest, time.perf_counter() - started)
    return slowest


@pytest.mark.parametrize(
    "batching", [SpanBatching(), SpanBatching(batch=5, most=20)], ids=["defaults", "OTEL_BSP"]
)
def test_a_collector_that_hangs_never_slows_a_span_and_what_overflows_is_counted(
    batching: SpanBatching,
) -> None:
    from opentelemetry.sdk.trace.export import SpanExportResult

    dropped: dict[str, int] = {}
    stuck = _Stuck(SpanExportResult.SUCCESS)
    tracing = Tracing(
        otlp_target("127.0.0.1:4317"), exporter=stuck, batching=batching,
        dropped=lambda reason, n: dropped.update({reason: dropped.get(reason, 0) + n}),
    )  # fmt: skip
    try:
        total = batching.most + batching.batch + 100
        assert _ended_spans(tracing, total) < 0.05  # (never waits for the collector)
        time.sleep(0.2)
        # one batch in the stuck export, the queue full behind it, the rest dropped
        assert 100 <= dropped.get("queue_full", 0) <= total - batching.most
    finally:
        stuck.release.set()
        tracing.shutdown()
    assert len(stuck.exported) + dropped["queue_full"] == total  # (nothing lost uncounted)


def test_a_failed_export_is_counted() -> None:
    dropped: dict[str, int] = {}
    failing = _Stuck(RuntimeError("collector down"))
    failing.release.set()
    tracing = Tracing(
        otlp_target("127.0.0.1:4317"), exporter=failing,
        dropped=lambda reason, n: dropped.update({reason: dropped.get(reason, 0) + n}),
    )  # fmt: skip
    _ended_spans(tracing, 10)
    assert tracing.provider.force_flush(5000)
    tracing.shutdown()
    assert dropped == {"export_failed": 10}


def test_a_steady_flow_of_spans_goes_out_in_batches() -> None:
    """Spans that come one at a time wait for the next export, `every` (here 0.5 s) after
    the first, and go out together: not in as many exports as the collector can take, each
    costing the export thread (and the Check threads, for the GIL) its overhead."""
    from opentelemetry.sdk.trace.export import SpanExportResult

    batches: list[int] = []

    class Collector:
        def export(self, batch: Any) -> Any:
            batches.append(len(batch))
            time.sleep(0.002)  # (a round trip)
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            pass

    tracing = Tracing(
        otlp_target("127.0.0.1:4317"), exporter=Collector(), batching=SpanBatching(every=0.5)
    )
    parent = tracing.parent(SAMPLED)
    ended = 0
    stop = time.monotonic() + 1.5
    while time.monotonic() < stop:
        tracing.tracer.start_span("x", parent).end()
        ended += 1
        time.sleep(0.001)
    tracing.shutdown()
    assert sum(batches) == ended
    assert 2 <= len(batches) <= 5, batches[:20]  # (every 0.5 s, and at the shutdown)


def test_a_shutdown_waits_for_a_collector_that_is_down_a_few_seconds_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The spans left at a shutdown get SHUTDOWN_WAIT seconds (5) to go out; a collector that
    never answers (an OTLP exporter retrying until it is shut down) does not hold the
    process for longer (it held it 30 s: past `--workers`' grace, the supervisor killed the
    worker and exited 1), and what was not sent is counted."""
    from extauthz.runtime import tracing as module

    monkeypatch.setattr(module, "SHUTDOWN_WAIT", 0.5, raising=False)
    dropped: dict[str, int] = {}
    stuck = _Stuck(RuntimeError("shut down while retrying"))
    tracing = Tracing(
        otlp_target("127.0.0.1:4317"), exporter=stuck,
        dropped=lambda reason, n: dropped.update({reason: dropped.get(reason, 0) + n}),
    )  # fmt: skip
    _ended_spans(tracing, 3 * SpanBatching.batch)
    started = time.monotonic()
    tracing.shutdown()
    assert time.monotonic() - started < 3
    assert dropped == {"export_failed": 3 * SpanBatching.batch}


def test_a_span_that_fails_never_changes_the_answer(
    exported: InMemorySpanExporter,
    authorizer: Authorizer,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A failure in the tracing of a Check (a bug: here the attributes cannot be made) is
    counted; the Check is answered as the untraced handler answers it, not with an error
    (which Envoy would turn into a 503 for an allowed request)."""
    from extauthz.runtime import tracing as module
    from extauthz.runtime.envoy_check import check_handler

    def broken(*args: Any) -> Any:
        raise RuntimeError("a bug")

    dropped: dict[str, int] = {}
    tracing = Tracing(
        otlp_target("127.0.0.1:4317"), exporter=exported,
        dropped=lambda reason, n: dropped.update({reason: dropped.get(reason, 0) + n}),
    )  # fmt: skip
    monkeypatch.setattr(module, "check_attributes", broken)
    monkeypatch.setattr(module, "usage_attributes", broken)
    issued = tokens.create(store, ["llm"], now=time.time())
    traced, untraced = tracing.check_handler(authorizer), check_handler(authorizer)
    for facts in (llm_facts(issued.token), RequestFacts("m"), RequestFacts("open")):
        read = (facts, {"x-request-id": "r1"}, None)
        assert traced(read, Context(("traceparent", SAMPLED))) == untraced(read, Context())
    tracing.charged(SAMPLED, issued.record.id, "llm", "demo-small", 200, Usage(3, 4))
    tracing.shutdown()
    assert dropped == {"span_failed": 4}


def test_an_exception_is_recorded_by_its_type_only(
    tracing: Tracing,
    exported: InMemorySpanExporter,
    authorizer: Authorizer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Check whose decision raises (a bug) fails as it does untraced, and its span says
    so by the exception's type: its message and traceback, which may quote the request
    (a credential among it), are not exported."""
    from opentelemetry.trace import StatusCode

    def raising(facts: RequestFacts, *args: Any) -> Any:
        raise ValueError(f"cannot read {facts.authorization}")

    monkeypatch.setattr(authorizer, "decide", raising)
    check = tracing.check_handler(authorizer)
    with pytest.raises(ValueError):
        check((RequestFacts("m", authorization="Bearer eat_s3cret"), {}, None),
              Context(("traceparent", SAMPLED)))  # fmt: skip
    (span,) = spans(tracing, exported)
    assert span.status.status_code is StatusCode.ERROR
    assert dict(span.attributes) == {"error.type": "ValueError"}
    assert "s3cret" not in repr([(e.name, dict(e.attributes or {})) for e in span.events])
    assert "s3cret" not in str(span.status.description)


def test_span_batching_reads_opentelemetrys_variables() -> None:
    assert span_batching({}) == SpanBatching(every=5.0, batch=512, most=2048)
    assert span_batching(
        {"OTEL_BSP_SCHEDULE_DELAY": "250", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": " 64 ",
         "OTEL_BSP_MAX_QUEUE_SIZE": "100", "OTEL_BSP_EXPORT_TIMEOUT": "x"}
    ) == SpanBatching(every=0.25, batch=64, most=100)  # fmt: skip
    assert span_batching({"OTEL_BSP_SCHEDULE_DELAY": ""}) == SpanBatching()  # (empty: unset)


@pytest.mark.parametrize(
    "name", ["OTEL_BSP_SCHEDULE_DELAY", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "OTEL_BSP_MAX_QUEUE_SIZE"]
)
@pytest.mark.parametrize(
    "value",
    ["0", "-1", "1.5", "5s", "1e3", "0x10", "\u0663", "9" * 11, "9" * 5000, "1\n2", "\x1b[2J"],
    ids=["zero", "negative", "fraction", "unit", "exponent", "hex", "arabic-digit",
         "huge", "thousands-of-digits", "newline", "escape"],
)  # fmt: skip
def test_a_bad_span_batching_variable_is_one_located_error(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        span_batching({name: value})
    message = str(raised.value)
    assert message.startswith(f"{name}=") and "expected a whole number from 1 to" in message
    assert "\n" not in message and "\x1b" not in message and len(message) < 200


def test_a_batch_larger_than_the_queue_is_refused() -> None:
    with pytest.raises(ConfigError, match="no larger than the queue"):
        span_batching({"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "600", "OTEL_BSP_MAX_QUEUE_SIZE": "500"})
