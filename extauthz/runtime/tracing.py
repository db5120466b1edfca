"""Traces (docs/operations.md#traces): with `--otlp-endpoint`, a span per Check
(`extauthz.check`) and per counted LLM response (`extauthz.llm.usage`), sent over OTLP.

A Check's span is a child of the span whose W3C `traceparent` Envoy sends in the call's gRPC
metadata (Envoy's span of its ext_authz call), and only when that parent is sampled: an
unsampled parent, none (Envoy does not trace the request: it sends none, e.g., for a client's
malformed `traceparent`) or one that is not a valid version-00 traceparent means no span,
and the SDK is not entered. So Envoy's sampling decides (a client's, only where the edge lets
a client's trace headers through: docs/operations.md#traces). An LLM allow carries
its span's `traceparent` in ext_authz's dynamic metadata, which reaches the counting of its
response (ext_proc's forwarded metadata, or the access-log record): the usage span is a
child of the Check's, in the same trace.

Nothing of this runs without the flag: the server builds `Tracing` only when it is given
(the OpenTelemetry SDK is imported then, not at the start of every command), and its Check
handler is another function (`check_handler` here, else server.check_handler). Spans are
ended on the handler's thread and exported in batches by the SDK's own thread.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from extauthz.config import OtlpTarget, SpanBatching
from extauthz.core.decision import Decision, Outcome, RequestFacts
from extauthz.core.llm_usage import Usage
from extauthz.errors import shown
from extauthz.runtime.authorizer import Authorizer
from extauthz.runtime.envoy_check import (
    CheckInput,
    check_handler,
    check_response_bytes,
    known_response_bytes,
    metadata_bytes,
)

TRACE_KEY = "traceparent"  # ext_authz's dynamic metadata: the Check span, for the usage span
SERVICE_NAME = "extauthz"
MAX_ATTRIBUTE = 128  # characters of a value read from the request (a route's name)
# allow and denial reasons that name a JWT (every other credential is told by its scheme)
_JWT_REASONS = frozenset({"granted_jwt", "invalid_jwt", "jwt_unsupported", "jwks_unavailable"})
_ALLOW = Outcome.ALLOW

CheckFunction = Callable[[CheckInput, Any], bytes]


def credential_kind(authorization: str | None, reason: str) -> str:
    """The kind of credential a request presented, as the policy's `credentials:` names
    them (`jwt`, `bearer`, `basic`), or `none`, or `other` (a scheme no kind reads); never
    anything of the credential itself."""
    if reason in _JWT_REASONS:
        return "jwt"
    if authorization is None:
        return "none"
    scheme = authorization.lstrip().partition(" ")[0].lower()
    return scheme if scheme in ("bearer", "basic") else "other"


def _bounded(text: str) -> str:
    """A value read from the request, as an attribute: short, printable."""
    if len(text) <= MAX_ATTRIBUTE and text.isprintable():
        return text
    return shown(text, MAX_ATTRIBUTE)


def check_attributes(facts: RequestFacts, decision: Decision) -> dict[str, Any]:
    """The attributes of a Check's span: route, decision, status, reason, credential kind,
    token id and subject, model. Never a credential (nor a header's value)."""
    route = facts.route
    if decision.outcome is _ALLOW:  # (the policy's name for it, also in match mode)
        route = dict(decision.metadata).get("route", route)
    attributes: dict[str, Any] = {
        "extauthz.route": _bounded(route) if route else "-",
        "extauthz.decision": decision.outcome.value,
        "extauthz.status": decision.status,
        "extauthz.reason": decision.reason,
        "extauthz.credential_kind": credential_kind(facts.authorization, decision.reason),
    }
    if decision.token_id is not None:
        attributes["extauthz.token_id"] = decision.token_id
    if decision.subject is not None:
        attributes["extauthz.subject"] = _bounded(decision.subject)
    if decision.model is not None:
        attributes["gen_ai.request.model"] = _bounded(decision.model)
    return attributes


def usage_attributes(
    token_id: str, route: str, model: str, status: int, used: Usage
) -> dict[str, Any]:
    """The attributes of an LLM response's usage span (`gen_ai.usage.*`: OpenTelemetry's
    names for the tokens a model read and wrote)."""
    attributes: dict[str, Any] = {
        "extauthz.route": _bounded(route) if route else "-",
        "gen_ai.request.model": _bounded(model),
        "http.response.status_code": status,
        "gen_ai.usage.input_tokens": used.prompt_tokens,
        "gen_ai.usage.output_tokens": used.completion_tokens,
    }
    if token_id:
        attributes["extauthz.token_id"] = _bounded(token_id)
    if used.estimated:  # (counted from the stream's chunks: no usage object was sent)
        attributes["extauthz.usage_estimated"] = True
    return attributes


# a W3C traceparent of version 00, what Envoy sends (its trace id, span id and flags)
_VERSION_00 = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_NO_TRACE, _NO_SPAN = "0" * 32, "0" * 16
_ODD = frozenset("13579bdf")  # the last digit of flags with the sampled bit on


def sampled(traceparent: str) -> bool:
    """Whether `traceparent` is a valid version-00 one with its sampled flag on: only then
    does a span follow it."""
    found = _VERSION_00.fullmatch(traceparent)
    return (
        found is not None
        and int(found[3], 16) & 1 == 1
        and found[1] != _NO_TRACE
        and found[2] != _NO_SPAN
    )


def _none(reason: str, n: int) -> None:
    pass


SHUTDOWN_WAIT = 5.0  # seconds a shutdown gives the collector for the spans left


class SpanQueue:
    """The span processor: ended spans wait in a bounded queue and a thread of its own
    exports them in batches, so a slow or absent collector never slows a decision; what
    does not fit, and what an export fails to send, is dropped and counted."""

    def __init__(
        self,
        exporter: Any,
        dropped: Callable[[str, int], None],
        batching: SpanBatching = SpanBatching(),  # noqa: B008 (frozen)
    ) -> None:
        self.exporter = exporter
        self.dropped = dropped
        self._every, self._batch, self._most = batching.every, batching.batch, batching.most
        self._queue: list[Any] = []
        self._wake = threading.Condition()
        self._stopping = False
        self._flushing = 0  # force_flush calls waiting: export now
        self._exporting = 0  # spans taken from the queue and not yet exported
        self._thread = threading.Thread(target=self._run, name="spans", daemon=True)
        self._thread.start()

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        pass

    def on_end(self, span: Any) -> None:
        with self._wake:
            if self._stopping or len(self._queue) >= self._most:
                full = True
            else:
                full = False
                self._queue.append(span)
                # the first span wakes the exporting thread (which then waits `every` for
                # more), a full batch has it export now
                if len(self._queue) in (1, self._batch):
                    self._wake.notify_all()
        if full:
            self.dropped("queue_full", 1)

    def _run(self) -> None:
        while True:
            with self._wake:
                # nothing to export: asleep until a span comes (no wake-ups while idle)
                while not (self._queue or self._stopping or self._flushing):
                    self._wake.wait()
                # the spans that come meanwhile wait for the next export, `every` after the
                # first, unless a batch is full, a flush asks or the queue stops (not one
                # export per span or two while they trickle in)
                deadline = time.monotonic() + self._every
                while (
                    len(self._queue) < self._batch
                    and not (self._stopping or self._flushing)
                    and (left := deadline - time.monotonic()) > 0
                ):
                    self._wake.wait(left)
                batch, self._queue = self._queue[: self._batch], self._queue[self._batch :]
                self._exporting = len(batch)
                stopping = self._stopping
            if batch:
                self._export(batch)
            with self._wake:
                self._exporting = 0
                self._wake.notify_all()
                if stopping and not self._queue:
                    return

    def _export(self, batch: list[Any]) -> None:
        from opentelemetry.sdk.trace.export import SpanExportResult

        try:
            ok = self.exporter.export(batch) == SpanExportResult.SUCCESS
        except Exception:  # (an exporter's failure is a count, never the server's)
            ok = False
        if not ok:
            self.dropped("export_failed", len(batch))

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Export what waits now; True when it was exported in time."""
        deadline = time.monotonic() + timeout_millis / 1000
        with self._wake:
            self._flushing += 1
            self._wake.notify_all()
            try:
                while self._queue or self._exporting:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._wake.wait(left)  # (each export's end wakes it)
            finally:
                self._flushing -= 1
        return True

    def shutdown(self) -> None:
        """Export what is left, for SHUTDOWN_WAIT seconds at most, then stop the exporter
        (which ends an export it is still retrying): a collector that is down never holds
        the process; what was not sent is dropped and counted."""
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        self._thread.join(timeout=SHUTDOWN_WAIT)
        with self._wake:
            left, self._queue = len(self._queue), []
        if left:
            self.dropped("export_failed", left)
        self.exporter.shutdown()
        self._thread.join(timeout=1.0)  # (the export it ended counts its spans)


class Tracing:
    """The tracer provider of one server process, its batch exporter, and what makes spans."""

    def __init__(
        self,
        target: OtlpTarget,
        exporter: Any = None,
        dropped: Callable[[str, int], None] = _none,
        batching: SpanBatching = SpanBatching(),  # noqa: B008 (frozen)
    ) -> None:
        """`exporter`: where spans go (tests pass an in-memory one); default: OTLP to
        `target` over gRPC or HTTP, as it names. `dropped(reason, n)`: told of spans not
        exported (the queue full while the collector is slow or down, or an export failed).
        `batching`: how they wait for it (config.span_batching reads OTEL_BSP_*)."""
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
        from opentelemetry.trace import (
            NonRecordingSpan,
            SpanContext,
            SpanKind,
            Status,
            StatusCode,
            TraceFlags,
            format_span_id,
            format_trace_id,
            set_span_in_context,
        )

        self.provider = TracerProvider(
            # (a root is never made: `parent` answers a sampled parent only)
            sampler=ParentBased(ALWAYS_OFF),
            resource=Resource.create({"service.name": SERVICE_NAME}),
        )
        exporter = exporter if exporter is not None else _exporter(target)
        from opentelemetry.sdk.trace import SpanProcessor

        class Processor(SpanQueue, SpanProcessor):  # (the SDK's hooks SpanQueue leaves out)
            pass

        self.spans = Processor(exporter, dropped, batching)
        self._dropped = dropped
        self._error = Status(StatusCode.ERROR)
        self.provider.add_span_processor(self.spans)
        self.tracer = self.provider.get_tracer("extauthz")

        def remote(trace: int, span: int, flags: int) -> Any:
            """The context of Envoy's span (a remote parent)."""
            return set_span_in_context(
                NonRecordingSpan(SpanContext(trace, span, True, TraceFlags(flags)))
            )

        self._context = remote
        self._server = SpanKind.SERVER
        self._trace_id = format_trace_id
        self._span_id = format_span_id

    def parent(self, traceparent: str) -> Any:
        """The context a span continues: the one a sampled `traceparent` names (else None:
        no span)."""
        if not sampled(traceparent):
            return None
        _, trace, span, flags = traceparent.split("-")
        return self._context(int(trace, 16), int(span, 16), int(flags, 16))

    def traceparent(self, span: Any) -> str:
        """A span's W3C traceparent (sampled: spans are made only so)."""
        context = span.get_span_context()
        return f"00-{self._trace_id(context.trace_id)}-{self._span_id(context.span_id)}-01"

    def _finished(self, span: Any, facts: RequestFacts, decision: Decision) -> str | None:
        """End a Check's `span` saying what was decided; its traceparent (None: the span
        failed, a bug, counted: the answer is the untraced handler's, never an error)."""
        try:
            span.set_attributes(check_attributes(facts, decision))
            trace: str | None = self.traceparent(span)
            span.end()
        except Exception:
            self._dropped("span_failed", 1)
            trace = None
        return trace

    def _failed(self, span: Any, e: Exception) -> None:
        """End the `span` of a decision that raised (a bug): the exception's type only, not
        its message nor its traceback, which may quote the request (its credential)."""
        try:
            span.set_attribute("error.type", type(e).__qualname__)
            span.set_status(self._error)
            span.end()
        except Exception:
            self._dropped("span_failed", 1)

    def check_handler(self, authorizer: Authorizer) -> CheckFunction:
        """envoy_check.check_handler with a span around each decision; an LLM allow carries the
        span's traceparent in its dynamic metadata (TRACE_KEY). A call without a sampled
        parent makes no span and never enters the SDK."""
        decide = authorizer.decide
        untraced = check_handler(authorizer)
        start = self.tracer.start_span
        parent = self.parent
        server = self._server
        dropped = self._dropped
        finished, failed = self._finished, self._failed

        def answer(decision: Decision, headers: Mapping[str, str], trace: str | None) -> bytes:
            if decision.outcome is not _ALLOW:
                return check_response_bytes(decision, headers.get("x-request-id", ""))
            found = known_response_bytes(id(decision))
            data = found[1] if found is not None and found[0] is decision else None
            if data is None:
                data = check_response_bytes(decision)
            if decision.model is not None and trace:  # (its response's usage span goes on)
                data += metadata_bytes(TRACE_KEY, trace)
            return data

        def check(read: CheckInput, context: Any) -> bytes:
            given = None
            for key, value in context.invocation_metadata():
                if key == TRACE_KEY:
                    given = value
                    break
            # most calls: Envoy's span is not sampled (its flags end in an even digit), or
            # there is no traceparent: the untraced handler's work, and no more
            if given.__class__ is not str or given[-1:] not in _ODD:
                return untraced(read, context)
            above = parent(given)
            if above is None:
                return untraced(read, context)
            facts, headers, attributes = read
            try:
                span = start("extauthz.check", above, server)
            except Exception:  # (a bug, counted: the Check goes on untraced)
                dropped("span_failed", 1)
                return untraced(read, context)
            try:
                decision = decide(facts, headers, attributes)
            except Exception as e:  # (as untraced: an error, which Envoy answers 503)
                failed(span, e)
                raise
            return answer(decision, headers, finished(span, facts, decision))

        return check

    def charged(
        self, trace: str, token_id: str, route: str, model: str, status: int, used: Usage
    ) -> None:
        """An LLM response's tokens were charged (UsageProcessor.charge): its span, a child
        of the Check's span `trace` names (ext_authz's metadata; none: no span). A failure
        (a bug) is counted, never the counting's."""
        try:
            above = self.parent(trace)
            if above is None:
                return
            span = self.tracer.start_span("extauthz.llm.usage", above)
            span.set_attributes(usage_attributes(token_id, route, model, status, used))
            span.end()
        except Exception:
            self._dropped("span_failed", 1)

    def shutdown(self) -> None:
        """Export what is left (for SHUTDOWN_WAIT seconds at most), then stop."""
        self.provider.shutdown()


def _exporter(target: OtlpTarget) -> Any:
    """The OTLP span exporter for `target`. Its headers, certificates and timeout follow
    the OTEL_EXPORTER_OTLP_* variables, as OpenTelemetry documents them."""
    if target.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=target.url, insecure=not target.tls)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpSpanExporter,
    )

    return HttpSpanExporter(endpoint=target.url)
