"""LLM responses counted inside Envoy (docs/llm.md#tokens-counted-from-responses): one record
per response.

Envoy's Lua filter on LLM routes (extauthz/dev/llm_usage.lua) reads each response as it
streams past and writes what it found into dynamic metadata `extauthz.usage`: `usage` (the
response's usage object, as JSON text), `complete` (the response ended; absent when the
client went away first), `unread` (why it could not be read). Envoy's gRPC access log
(`envoy.service.accesslog.v3.AccessLogService`, served by `extauthz serve` on the Check
port) sends one entry per response, in batches, with that metadata beside ext_authz's (who
called, the reservation); extauthz charges it (UsageProcessor.charge). So extauthz's work
per response does not depend on how many chunks it had. A response whose record never
arrives, or whose usage was not found, keeps its whole reservation (fail closed).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import grpc
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc

from extauthz.core.llm_usage import MAX_TOKENS, USAGE_NAMESPACE, Usage, usage_of
from extauthz.runtime.ext_proc import EXT_AUTHZ_NAMESPACE, UsageProcessor
from extauthz.runtime.limiter import METADATA_KEY as TOKEN_LIMITS_KEY
from extauthz.runtime.tickets import TICKET_KEY
from extauthz.runtime.tracing import TRACE_KEY

log = logging.getLogger("extauthz.llm")
NAMESPACE = USAGE_NAMESPACE  # what the Lua filter writes
MAX_USAGE_TEXT = 8192  # (the Lua filter sends at most ~4 KiB of a usage object)


def _strings(metadata: Any, namespace: str) -> dict[str, str]:
    fields = metadata.filter_metadata.get(namespace)
    if fields is None:
        return {}
    return {k: v.string_value for k, v in fields.fields.items()}


def record(entry: Any) -> tuple[dict[str, str], dict[str, str], int]:
    """An access log entry's ext_authz metadata, the Lua filter's, and the status."""
    metadata = entry.common_properties.metadata
    status = int(entry.response.response_code.value)
    return _strings(metadata, EXT_AUTHZ_NAMESPACE), _strings(metadata, NAMESPACE), status


class UsageRecords(als_pb2_grpc.AccessLogServiceServicer):  # type: ignore[misc]
    """The AccessLogService: one entry per LLM response, charged as ext_proc would."""

    def __init__(self, processor: UsageProcessor) -> None:
        self.processor = processor

    def StreamAccessLogs(self, requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
        try:
            for message in requests:
                for entry in message.http_logs.log_entry:
                    self.charge(entry)
        except grpc.RpcError:
            pass  # Envoy closed the stream (it opens another for the next entries)
        return als_pb2.StreamAccessLogsResponse()

    def charge(self, entry: Any) -> None:
        """Charge one response from its access log entry (entries of other requests, and
        of requests extauthz did not allow with a model, are passed over)."""
        authz, found, status = record(entry)
        model = authz.get("model", "")
        if not model or found.get("v") != "1":
            return
        used = None
        text = found.get("usage", "")
        if text and len(text) <= MAX_USAGE_TEXT:
            try:
                used = usage_of({"usage": json.loads(text)})
            except (ValueError, RecursionError):
                used = None
        events = found.get("content_events", "")
        if used is None and events.isdigit() and 0 < int(events) <= MAX_TOKENS:
            used = Usage(0, int(events), estimated=True)  # (a metric; the reservation stays)
        self.processor.charge(
            authz.get("token_id", ""),
            authz.get("route", ""),
            model,
            authz.get(TOKEN_LIMITS_KEY, ""),
            status,
            used,
            authz.get(TICKET_KEY, ""),
            authz.get(TRACE_KEY, ""),
        )
