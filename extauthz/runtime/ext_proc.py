"""Envoy's External Processing service on LLM routes (docs/llm.md): the response streams past
extauthz, which reads the tokens it used and charges them to the caller.

`envoy.service.ext_proc.v3.ExternalProcessor/Process` is one bidirectional stream per HTTP
request, served by `extauthz serve` on the Check port. The shipped config runs the counting
filter in observability mode (every chunk goes on to the client at once, nothing waits for
extauthz); any other processing mode counts too (each message is then answered at once).
Who called comes from ext_authz's dynamic metadata (Envoy's
`metadata_options.forwarding_namespaces`): token id, route, model. The usage is read from a
JSON body or an SSE stream (core/llm_usage.py) and charged when the stream ends, also when
the client went away mid-stream (what was generated is charged); a token-limit reservation
riding in the metadata is settled then (runtime/limiter.py). A response whose usage
cannot be read is never settled: its reservation stays charged.

A second filter, `extauthz.stream_usage`, before the counting one, named by its gRPC initial
metadata (`x-extauthz-filter: edit`), sets what ext_authz's metadata asks in request bodies
(`stream_options.include_usage` for `stream_usage: require`, an output cap where the body
names none) and takes the asked-for usage chunk out of the reply; it lets every other
request go at its headers, and a response it has nothing to remove from at its request
body. It fails closed: a body it cannot edit, or no room to edit it, is 503
`counting_unavailable` before the model.

A stream holds a handler thread for as long as it is followed: at most `max_streams` at
once (the server's thread pool has that many more threads than Check needs). A response
over that is not followed (its reservation stays charged, the metric counts it), never at
the cost of a Check.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as mode_pb
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from envoy.type.v3 import http_status_pb2

from extauthz.core.decision import EDIT_KEY, STRIP_KEY
from extauthz.core.llm import apply_splices
from extauthz.core.llm_usage import (
    EDIT_FILTER_METADATA,
    MAX_JSON_BODY,
    NOTHING_USED,
    StreamUsage,
    Usage,
    UsageChunkRemover,
    json_usage,
)
from extauthz.core.prices import NO_PRICES, PriceTable
from extauthz.runtime.limiter import METADATA_KEY as TOKEN_LIMITS_KEY
from extauthz.runtime.limiter import Limiter
from extauthz.runtime.metrics import Metrics
from extauthz.runtime.tickets import TICKET_KEY, Claims, Tickets
from extauthz.runtime.tracing import TRACE_KEY
from extauthz.runtime.usage import UsageMeter

log = logging.getLogger("extauthz.llm")
EXT_AUTHZ_NAMESPACE = "envoy.filters.http.ext_authz"
# free stream slots an LLM request needs at the editing filter: its own edit and its count
_ROOM = 2
WARN_EVERY = 60.0  # seconds between warnings about responses not counted
_ANSWERS = {  # a message's field → the answer Envoy waits for outside observability mode
    "request_headers": pb.ProcessingResponse(request_headers=pb.HeadersResponse()),
    "response_headers": pb.ProcessingResponse(response_headers=pb.HeadersResponse()),
    "request_body": pb.ProcessingResponse(request_body=pb.BodyResponse()),
    "response_body": pb.ProcessingResponse(response_body=pb.BodyResponse()),
    "request_trailers": pb.ProcessingResponse(request_trailers=pb.TrailersResponse()),
    "response_trailers": pb.ProcessingResponse(response_trailers=pb.TrailersResponse()),
}


def _metadata(message: Any) -> dict[str, str]:
    """ext_authz's dynamic metadata, as Envoy forwards it (string values)."""
    if not message.HasField("metadata_context"):
        return {}
    fields = message.metadata_context.filter_metadata.get(EXT_AUTHZ_NAMESPACE)
    if fields is None:
        return {}
    return {k: v.string_value for k, v in fields.fields.items()}


_NOTHING_MORE = mode_pb.ProcessingMode(
    request_body_mode=mode_pb.ProcessingMode.NONE,
    response_header_mode=mode_pb.ProcessingMode.SKIP,
    response_body_mode=mode_pb.ProcessingMode.NONE,
)
_LET_GO = pb.ProcessingResponse(request_headers=pb.HeadersResponse(), mode_override=_NOTHING_MORE)
_NO_LENGTH = pb.ProcessingResponse(
    response_headers=pb.HeadersResponse(
        response=pb.CommonResponse(
            header_mutation=pb.HeaderMutation(remove_headers=["content-length"])
        )
    )
)
_STOP_RESPONSE = pb.ProcessingResponse(
    response_headers=pb.HeadersResponse(),
    mode_override=mode_pb.ProcessingMode(response_body_mode=mode_pb.ProcessingMode.NONE),
)
_COUNTING_UNAVAILABLE = pb.ProcessingResponse(
    immediate_response=pb.ImmediateResponse(
        status=http_status_pb2.HttpStatus(code=503),
        headers=pb.HeaderMutation(
            set_headers=[
                base_pb2.HeaderValueOption(
                    header=base_pb2.HeaderValue(key="content-type", raw_value=b"application/json")
                )
            ]
        ),
        body=json.dumps(
            {
                "error": "counting_unavailable",
                "message": "the tokens of this request cannot be bounded now; retry later",
            }
        ).encode(),
        details="counting_unavailable",
    )
)


def _edited_body(body: bytes, spec: str, had_length: bool) -> Any | None:
    """The answer to a buffered request body: the decision's splices applied (and
    content-length with them, when the request had one); None when they do not fit it."""
    edited = apply_splices(body, spec)
    if edited is None:
        return None
    answer = pb.ProcessingResponse(request_body=pb.BodyResponse())
    common = answer.request_body.response
    common.body_mutation.body = edited
    if had_length:
        common.header_mutation.set_headers.add(
            header=base_pb2.HeaderValue(key="content-length", raw_value=str(len(edited)).encode()),
            append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
        )
    return answer


def _without_usage_chunk(body: Any, remover: UsageChunkRemover) -> Any:
    """The answer to a reply chunk: what of it goes on without the asked-for usage chunk."""
    out = remover.feed(body.body, last=body.end_of_stream)
    answer = pb.ProcessingResponse(response_body=pb.BodyResponse())
    if out != body.body:
        mutation = answer.response_body.response.body_mutation
        if out:
            mutation.body = out
        else:
            mutation.clear_body = True
    return answer


def _value(header: Any) -> str:
    return str(header.raw_value.decode("latin-1") if header.raw_value else header.value)


class Exchange:
    """One response as it passes: who called, its status and kind, what it used."""

    def __init__(self) -> None:
        self.token_id = ""
        self.route = ""
        self.model = ""
        self.token_limits = ""  # the reservation to settle (the Limiter's metadata)
        self.ticket = ""  # their signature (runtime/tickets.py)
        self.trace = ""  # the Check's span (runtime/tracing.py), with --otlp-endpoint
        self.status = 0
        self.stream: StreamUsage | None = None  # an SSE response
        self.body = bytearray()  # a JSON response, up to MAX_JSON_BODY
        self.too_long = False
        self.ended = False  # the response's last chunk passed

    def read(self, message: Any) -> None:
        if not self.model:
            values = _metadata(message)
            if values:
                self.token_id = values.get("token_id", "")
                self.route = values.get("route", "")
                self.model = values.get("model", "")
                self.token_limits = values.get(TOKEN_LIMITS_KEY, "")
                self.ticket = values.get(TICKET_KEY, "")
                self.trace = values.get(TRACE_KEY, "")
        kind = message.WhichOneof("request")
        if kind == "response_headers":
            for header in message.response_headers.headers.headers:
                value = _value(header)
                if header.key == ":status" and value.isdigit():
                    self.status = int(value)
                elif header.key == "content-type" and value.startswith("text/event-stream"):
                    self.stream = StreamUsage()
        elif kind == "response_body":
            self.ended = message.response_body.end_of_stream
            chunk = message.response_body.body
            if self.stream is not None:
                self.stream.feed(chunk)
                self.ended = self.ended or self.stream.done
            elif len(self.body) + len(chunk) <= MAX_JSON_BODY:
                self.body += chunk
            else:
                self.too_long = True

    def usage(self) -> Usage | None:
        if not 200 <= self.status < 300 or not self.model:
            return None
        if self.stream is not None:
            return self.stream.result()
        return None if self.too_long else json_usage(bytes(self.body))


class UsageProcessor(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    """The ExternalProcessor service: charges LLM tokens to their callers."""

    def __init__(
        self,
        usage: UsageMeter | None,
        metrics: Metrics | None,
        max_streams: int,
        clock: Callable[[], float] = time.time,
        limiter: Limiter | None = None,
        tickets: Tickets | None = None,
        prices: Callable[[], PriceTable] = lambda: NO_PRICES,
    ) -> None:
        self.usage = usage
        self.prices = prices
        self.tickets = tickets
        self.claims = Claims(tickets) if tickets is not None else None
        self.metrics = metrics
        self.limiter = limiter
        self.clock = clock
        self._free = max_streams  # streams that may still be followed (under _lock)
        self._missed: dict[str, int] = {}  # uncounted responses since the last warning
        self._warned_at = -WARN_EVERY
        self._lock = threading.Lock()
        # a response's tokens were charged: (traceparent, token id, route, model, status,
        # usage) → its span (runtime/tracing.py, with --otlp-endpoint)
        self.on_charge: Callable[[str, str, str, str, int, Usage], None] | None = None

    def _take(self) -> bool:
        """A stream slot, if one is free."""
        with self._lock:
            if self._free <= 0:
                return False
            self._free -= 1
            return True

    def _give(self) -> None:
        with self._lock:
            self._free += 1

    def _free_streams(self) -> int:
        with self._lock:
            return self._free

    def _uncounted(self, reason: str) -> None:
        """A response whose tokens are not counted: the metric, and a warning at most once a
        minute (with how many of each reason since the last)."""
        if self.metrics is not None:
            self.metrics.llm_uncounted.labels(reason).inc()
        now = self.clock()
        with self._lock:
            self._missed[reason] = self._missed.get(reason, 0) + 1
            if now - self._warned_at < WARN_EVERY:
                return
            missed, self._missed, self._warned_at = self._missed, {}, now
        log.warning(
            "LLM responses not counted: %s",
            ", ".join(f"{n} {why}" for why, n in sorted(missed.items())),
            extra={"fields": {"uncounted": missed}},
        )

    def Process(self, requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        editing = EDIT_FILTER_METADATA in tuple(context.invocation_metadata())
        try:
            first = next(requests, None)
            if first is None:
                return
            if editing:
                yield from self._edit_body(first, requests)
            else:
                yield from self._count(first, requests)
        except grpc.RpcError:
            pass  # Envoy reset the stream (the client went away)

    def _count(self, first: Any, requests: Iterator[Any]) -> Iterator[Any]:
        """The counting filter: charge what the response used when it ends, or what passed
        when Envoy resets the stream. Outside observability mode every message is answered
        as it comes (nothing changed)."""
        if not self._take():
            self._uncounted("too_many_streams")  # (its reservation stays charged)
            return  # (a clean close: Envoy goes on without us)
        exchange = Exchange()
        try:
            message = first
            while True:
                exchange.read(message)
                if not message.observability_mode:
                    answer = _ANSWERS.get(message.WhichOneof("request") or "")
                    if answer is not None:
                        yield answer
                if exchange.ended:  # charged at once (Envoy closes the stream later)
                    break
                message = next(requests, None)
                if message is None:
                    break
        finally:
            self._give()
            self._charge(exchange)

    def _edit_body(self, first: Any, requests: Iterator[Any]) -> Iterator[Any]:
        """The body-editing filter (before the counting one): applies the edit that
        ext_authz's metadata carries (`edit`: LlmRequest.splices) to the request body. A
        stream asked for its usage chunk has that chunk taken out of the reply after the
        counting filter read it; any other request is let go after its body (a clean close:
        Envoy goes on without us), and one with nothing to set at its headers."""
        kind = first.WhichOneof("request")
        if kind != "request_headers":  # (a local reply, such as a denial: nothing to edit)
            default = _ANSWERS.get(kind or "")
            if default is not None and not first.observability_mode:
                yield default
            return  # (a clean close: Envoy goes on without us)
        headers = first.request_headers.headers.headers
        fields = _metadata(first)
        spec = fields.get(EDIT_KEY, "")
        if fields.get("model") and self._free_streams() < _ROOM:
            # (this process could not follow its response: refused before the model)
            self._uncounted("too_many_streams")
            yield _COUNTING_UNAVAILABLE
            return
        if not spec:
            yield _LET_GO
            return
        if not self._take():
            self._uncounted("too_many_streams")
            yield _COUNTING_UNAVAILABLE  # (never served without its cap or its usage)
            return
        try:
            had_length = any(h.key == "content-length" for h in headers)
            yield _ANSWERS["request_headers"]
            remover: UsageChunkRemover | None = None
            for message in requests:
                kind = message.WhichOneof("request")
                if kind == "request_body":
                    answer = _edited_body(message.request_body.body, spec, had_length)
                    if answer is None:
                        self._uncounted("unreadable_request")
                        yield _COUNTING_UNAVAILABLE
                        return
                    yield answer
                    if fields.get(STRIP_KEY) != "1":
                        return  # nothing to take out of the reply
                    remover = UsageChunkRemover()
                elif kind == "response_headers":
                    exchange = Exchange()
                    exchange.read(message)
                    if remover is None or exchange.stream is None or exchange.status != 200:
                        yield _STOP_RESPONSE
                        return
                    yield _NO_LENGTH  # (the reply's length changes)
                elif kind == "response_body" and remover is not None:
                    yield _without_usage_chunk(message.response_body, remover)
                else:
                    default = _ANSWERS.get(kind or "")
                    if default is not None:
                        yield default
        finally:
            self._give()

    def _charge(self, exchange: Exchange) -> None:
        self.charge(
            exchange.token_id,
            exchange.route,
            exchange.model,
            exchange.token_limits,
            exchange.status,
            exchange.usage(),
            exchange.ticket,
            exchange.trace,
        )

    def charge(
        self,
        token_id: str,
        route: str,
        model: str,
        token_limits: str,
        status: int,
        used: Usage | None,
        ticket: str = "",
        trace: str = "",
    ) -> None:
        """One LLM response ended (`status`, `used`: its usage, None when unreadable):
        settle its reservation (ext_authz's `token_limits` metadata) and charge its tokens
        to the caller, the metrics and usage. With `tickets`, a record whose `ticket` does
        not verify is not counted at all (its reservation stays), and one that does is
        counted once its nonce is claimed (`Claims`: batched, soon after). `trace`: the
        Check's traceparent, for the span of a charged response (`on_charge`)."""
        tickets = self.tickets
        if tickets is None or self.claims is None:
            self._counted(token_id, route, model, token_limits, status, used, trace)
            return
        record = tickets.verified(token_id, route, model, token_limits, ticket)
        if record is None:
            self._uncounted("unsigned")
            return

        def then(first: bool) -> None:
            if first:
                self._counted(token_id, route, model, token_limits, status, used, trace)
            else:
                self._uncounted("counted_already")

        self.claims.add(record, then)

    def _counted(
        self,
        token_id: str,
        route: str,
        model: str,
        token_limits: str,
        status: int,
        used: Usage | None,
        trace: str = "",
    ) -> None:
        if token_limits and self.limiter is not None:
            # a success is charged its usage; one whose usage cannot be read (or only
            # estimated from its chunks) keeps its whole reservation, and so does a response
            # that may have cost the model all the same (no status: the client went away
            # first; 408, 5xx: a timeout or a failure after it worked); a refusal (another
            # 4xx) used nothing
            spent = used if used is not None and not used.estimated else None
            if 400 <= status < 500 and status != 408:
                spent = NOTHING_USED
            self.limiter.settle(token_limits, spent, self.clock())
        if used is None or not 200 <= status < 300:
            if model and 200 <= status < 300:
                self._uncounted("no_usage")
            return
        price = self.prices().of(model)  # (what it cost at the prices in force now)
        cost = None
        if price is not None and not used.estimated:
            cost = price.cost(used.prompt_tokens, used.completion_tokens, used.cached_tokens)
        if self.metrics is not None:
            self.metrics.llm_tokens(route, model, used, cost)
        if self.usage is not None and token_id:
            self.usage.charge(token_id, model, self.clock(), used, cost or 0)
        if self.on_charge is not None:
            self.on_charge(trace, token_id, route, model, status, used)
