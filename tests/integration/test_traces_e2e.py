"""One trace from the client to the model (docs/operations.md#traces): the real Envoy with its
OpenTelemetry tracer, the real `extauthz serve --otlp-endpoint`, the demo LLM server, and an
OTLP collector written here (opentelemetry-proto's TraceService over gRPC on 127.0.0.1).

One LLM request through Envoy gives Envoy's spans, an `extauthz.check` span whose parent is
Envoy's span of the ext_authz call (same trace), and an `extauthz.llm.usage` span in that
trace with the tokens the response used: counted from Envoy's access-log record (the stack
`extauthz up` starts, its Envoy config made with `--otlp-endpoint`) and over ext_proc (a
second Envoy, `envoy_config.with_tracing`)."""

from __future__ import annotations

import os
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
import openai
import pytest
import yaml
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from extauthz.admin import tokens
from extauthz.config import Settings, otlp_target
from extauthz.dev.envoy_config import OTEL_TRACER, http_managers, with_tracing
from extauthz.dev.stack import Stack
from tests.support.procs import envoy_in_front, local_stack, run_cli, wait_for

pytestmark = [pytest.mark.redis, pytest.mark.envoy]


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC receiver keeping every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.lock = threading.Lock()

    def Export(self, request: Any, context: Any) -> Any:
        received = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(
                        Span(
                            str(resource.get("service.name", "")),
                            span.name,
                            span.trace_id.hex(),
                            span.span_id.hex(),
                            span.parent_span_id.hex(),
                            {a.key: _value(a.value) for a in span.attributes},
                        )
                    )
        with self.lock:
            self.spans.extend(received)
        return trace_service_pb2.ExportTraceServiceResponse()

    def in_trace(self, trace_id: str) -> list[Span]:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def named(self, name: str) -> list[Span]:
        with self.lock:
            return [s for s in self.spans if s.name == name]


@pytest.fixture(scope="module")
def collector() -> Iterator[tuple[Collector, int]]:
    receiver = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield receiver, port
    server.stop(0)


def fast_flush(config: dict[str, Any]) -> dict[str, Any]:
    """Envoy's tracer sends its spans every 100 ms (5 s by default)."""
    layer = {
        "tracing.opentelemetry.flush_interval_ms": 100,
        "tracing.opentelemetry.min_flush_spans": 1,
    }
    config["layered_runtime"] = {"layers": [{"name": "fast-flush", "static_layer": layer}]}
    return config


@pytest.fixture(scope="module")
def stack(
    collector: tuple[Collector, int], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    endpoint = f"127.0.0.1:{collector[1]}"
    settings = Settings(usage_flush=0.2, auth_failure_burst=0, otlp_endpoint=endpoint)
    before = os.environ.get("OTEL_BSP_SCHEDULE_DELAY")
    os.environ["OTEL_BSP_SCHEDULE_DELAY"] = "100"  # (extauthz's batches: every 0.1 s)
    try:
        with local_stack(tmp_path_factory.mktemp("traces"), settings) as s:
            yield s
    finally:
        if before is None:
            os.environ.pop("OTEL_BSP_SCHEDULE_DELAY", None)
        else:
            os.environ["OTEL_BSP_SCHEDULE_DELAY"] = before


def one_request(port: int, token: str) -> Any:
    c = openai.OpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key=token, max_retries=0, timeout=10
    )
    messages: Any = [{"role": "user", "content": "trace these four words"}]
    answer = c.chat.completions.create(model="demo-small", messages=messages)
    assert answer.usage is not None
    return answer


def the_trace(received: Collector, token_id: str, timeout: float = 15) -> dict[str, Span]:
    """The spans of the one trace whose usage span charged `token_id`: Envoy's, the Check's,
    the usage span (waits for all three to arrive)."""
    found: dict[str, Span] = {}

    def complete() -> bool:
        usage = [s for s in received.named("extauthz.llm.usage")
                 if s.attributes.get("extauthz.token_id") == token_id]  # fmt: skip
        if not usage:
            return False
        spans = received.in_trace(usage[0].trace_id)
        checks = [s for s in spans if s.name == "extauthz.check"]
        envoy = [s for s in spans if s.service == "envoy"]
        if not checks or not envoy:
            return False
        found.update(usage=usage[0], check=checks[0])
        found.update({f"envoy:{s.span_id}": s for s in envoy})
        ids = {s.span_id for s in envoy}
        # Envoy's span of the ext_authz call, and its parent (the request's, sent when the
        # response ended)
        return any(s.span_id == checks[0].parent_id and s.parent_id in ids for s in envoy)

    wait_for(complete, timeout, "Envoy's span, the Check's and the usage span in one trace")
    return found


def check_the_trace(spans: dict[str, Span], token_id: str, answer: Any) -> None:
    check, usage = spans["check"], spans["usage"]
    envoy = [s for key, s in spans.items() if key.startswith("envoy:")]
    parent = next(s for s in envoy if s.span_id == check.parent_id)
    assert check.service == usage.service == "extauthz"
    assert {s.trace_id for s in (check, usage, *envoy)} == {check.trace_id}
    assert check.attributes == {
        "extauthz.route": "llm",
        "extauthz.decision": "allow",
        "extauthz.status": 200,
        "extauthz.reason": "granted",
        "extauthz.credential_kind": "bearer",
        "extauthz.token_id": token_id,
        "extauthz.subject": token_id,
        "gen_ai.request.model": "demo-small",
    }
    assert usage.parent_id == check.span_id  # (the Check's traceparent, in its metadata)
    assert usage.attributes["gen_ai.usage.input_tokens"] == answer.usage.prompt_tokens
    assert usage.attributes["gen_ai.usage.output_tokens"] == answer.usage.completion_tokens
    assert usage.attributes["gen_ai.request.model"] == "demo-small"
    assert usage.attributes["extauthz.route"] == "llm"
    # Envoy's span of the ext_authz call is a child of its span of the request
    assert parent.parent_id in {s.span_id for s in envoy}


def test_up_traces_envoy_and_extauthz_counted_from_the_access_log(
    stack: Stack, collector: tuple[Collector, int]
) -> None:
    config = yaml.safe_load(stack.envoy_config.read_text())
    traced = [m for m in http_managers(config) if "tracing" in m]
    assert len(traced) == 2  # the external and the internal listener (not the console's)
    assert {m["tracing"]["provider"]["name"] for m in traced} == {OTEL_TRACER}
    made = tokens.create(stack.store(), ["llm"], now=time.time())
    answer = one_request(stack.ports.external.port, made.token)
    # (the stack's Envoy sends its spans every 5 s, its default)
    spans = the_trace(collector[0], made.record.id, timeout=20)
    check_the_trace(spans, made.record.id, answer)
    every = [v for s in collector[0].named("extauthz.check") for v in s.attributes.values()]
    assert not any(isinstance(v, str) and made.token in v for v in every)


def test_a_trace_counted_over_ext_proc(
    stack: Stack, collector: tuple[Collector, int], tmp_path: Any
) -> None:
    target = otlp_target(f"127.0.0.1:{collector[1]}")
    with envoy_in_front(
        stack, tmp_path, counting="ext-proc", edit=lambda c: fast_flush(with_tracing(c, target))
    ) as port:
        made = tokens.create(stack.store(), ["llm"], now=time.time())
        answer = one_request(port, made.token)
        spans = the_trace(collector[0], made.record.id)
    check_the_trace(spans, made.record.id, answer)


def test_an_unsampled_request_makes_no_extauthz_span(
    stack: Stack, collector: tuple[Collector, int], tmp_path: Any
) -> None:
    """Envoy samples none (random_sampling 0%): it sends an unsampled traceparent, and
    extauthz, sampling as its parent, makes no span for the Check nor for the usage. A
    client's own traceparent, sampled or malformed (Envoy then sends none), changes
    nothing, nor do the headers from which Envoy would take a decision to trace
    (x-client-trace-id; an x-request-id whose 15th digit says sampled or forced, or whose
    first 8 fall under the sampled fraction): the client does not decide what extauthz
    traces."""
    target = otlp_target(f"127.0.0.1:{collector[1]}")

    def unsampled(config: dict[str, Any]) -> dict[str, Any]:
        config = fast_flush(with_tracing(config, target))
        for manager in http_managers(config):
            if "tracing" in manager:
                manager["tracing"]["random_sampling"] = {"value": 0}
        return config

    with envoy_in_front(stack, tmp_path, counting="ext-proc", edit=unsampled) as port:
        made = tokens.create(stack.store(), ["llm"], now=time.time())
        one_request(port, made.token)
        for sent in (
            {"traceparent": f"00-{'ab' * 16}-{'cd' * 8}-01"},
            {"traceparent": f"00-{'ab' * 17}-{'cd' * 8}-01"},
            {"traceparent": "x"},
            {"x-client-trace-id": "mine"},
            *({"x-request-id": f"00000000-1c7e-{digit}1b2-9c3d-0123456789ab"} for digit in "9ab"),
        ):
            listing = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/models",
                headers={"authorization": f"Bearer {made.token}", **sent},
            )
            with urllib.request.urlopen(listing, timeout=10) as answer:
                assert answer.status == 200

        def charged() -> bool:
            day = tokens.usage(stack.store(), made.record.id, 1, time.time())["days"][0]
            return "demo-small" in day.get("models", {})

        wait_for(charged, 10, "the response charged")
        time.sleep(1.0)  # (ten of extauthz's export batches)
    mine = [
        s
        for s in collector[0].named("extauthz.check") + collector[0].named("extauthz.llm.usage")
        if s.attributes.get("extauthz.token_id") == made.record.id
    ]
    assert mine == []


def test_a_client_neither_stops_a_trace_nor_chooses_its_id(
    stack: Stack, collector: tuple[Collector, int], tmp_path: Any
) -> None:
    """Envoy samples every request: a client's traceparent, unsampled or naming a trace of
    its choosing, is not continued (Envoy's external listener removes it), so the Check has
    its span all the same, in a trace Envoy started."""
    target = otlp_target(f"127.0.0.1:{collector[1]}")
    chosen = "ab" * 16
    with envoy_in_front(
        stack, tmp_path, counting="ext-proc", edit=lambda c: fast_flush(with_tracing(c, target))
    ) as port:
        made = tokens.create(stack.store(), ["llm"], now=time.time())
        for flags in ("00", "01"):
            listing = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/models",
                headers={
                    "authorization": f"Bearer {made.token}",
                    "traceparent": f"00-{chosen}-{'cd' * 8}-{flags}",
                },
            )
            with urllib.request.urlopen(listing, timeout=10) as answer:
                assert answer.status == 200

        def mine() -> list[Span]:
            return [
                s
                for s in collector[0].named("extauthz.check")
                if s.attributes.get("extauthz.token_id") == made.record.id
            ]

        wait_for(lambda: len(mine()) == 2, 10, "both Checks' spans")
    assert chosen not in {s.trace_id for s in mine()}


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_refuses_a_bad_otel_bsp_variable_in_one_line(workers: str) -> None:
    """Before it listens, and before any worker starts (not a crash loop of workers)."""
    result = run_cli(
        "redis://127.0.0.1:1/0", "serve", "--otlp-endpoint", "127.0.0.1:4317",
        "--workers", workers, "--listen", "127.0.0.1:0",
        env={"OTEL_BSP_SCHEDULE_DELAY": "5s"}, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result
    assert result.stderr.count("\n") == 1, result.stderr
    assert "OTEL_BSP_SCHEDULE_DELAY='5s': expected a whole number from 1 to" in result.stderr
