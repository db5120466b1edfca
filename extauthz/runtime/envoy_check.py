"""The only module that touches Envoy's protobuf types.

`check_input_reader` turns a CheckRequest's bytes into plain RequestFacts (and the headers
and attributes the rare paths read later); `check_response_bytes` turns a Decision into a
serialized CheckResponse.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, Protocol

from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2
from google.rpc import code_pb2, status_pb2

from extauthz.core.bounded import ENTRY_OVERHEAD, BoundedDict
from extauthz.core.decision import (
    IDENTITY_PREFIX,
    NO_HEADERS,
    Decision,
    Outcome,
    RequestFacts,
    shown_request_id,
)
from extauthz.core.llm import LlmRequest, read_model_request

CheckRequest = external_auth_pb2.CheckRequest
_ALLOW = Outcome.ALLOW
CheckResponse = external_auth_pb2.CheckResponse

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_OK = status_pb2.Status(code=code_pb2.OK)
_DENIED_STATUS = {
    401: status_pb2.Status(code=code_pb2.UNAUTHENTICATED),
    403: status_pb2.Status(code=code_pb2.PERMISSION_DENIED),
    400: status_pb2.Status(code=code_pb2.INVALID_ARGUMENT),
    404: status_pb2.Status(code=code_pb2.NOT_FOUND),
    429: status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED),
}
_UNAVAILABLE = status_pb2.Status(code=code_pb2.UNAVAILABLE)


METADATA_NAMESPACE = "extauthz"  # route metadata: filter_metadata.extauthz.route
GATEWAY_NAMESPACE = "envoy-gateway"  # Envoy Gateway's includeRouteMetadata
GATEWAY_ANNOTATION = "extauthz-route"  # HTTPRoute gateway.envoyproxy.io/extauthz-route


def facts_from_check_request(request: Any, route_identity: str = "context") -> RequestFacts:
    """Extract what the decision needs from a parsed Envoy CheckRequest (where the client
    is included); the route's name from the one source `route_identity` names, never from
    another (docs/design.md#route-identity)."""
    facts = _read(request.attributes, route_identity, None)[0]
    address, network = client_of(request.attributes)
    return facts._replace(
        source_address=address, network=network, llm=llm_request_of(request.attributes)
    )


_NEW_FACTS = tuple.__new__  # makes RequestFacts without its Python-level __new__
_PREFIX_BYTES = IDENTITY_PREFIX.encode()
_parse = CheckRequest.FromString

# What the Check handler gets for each call: the facts without where the client is (read
# only when needed, see `client_of`), the request's headers and its attributes.
CheckInput = tuple[RequestFacts, Mapping[str, str], Any]


def check_input_reader(route_identity: str = "context") -> Callable[[bytes], CheckInput]:
    """The gRPC request deserializer: a CheckRequest's bytes → CheckInput, in one pass.

    The hot path's only reading of the request: every field read makes a Python object, a
    few hundred instructions, so what is rarely needed is not read (the client's address
    and network), and the rare request that carries x-extauthz-* header names is found by
    one scan of its bytes in C (a header name is in the serialized request as sent) rather
    than by walking the header map. (bytes.find: `in` first tries the needle as an int.)
    """
    if route_identity != "context":
        return lambda data: _read(
            _parse(data).attributes, route_identity, data.find(_PREFIX_BYTES) >= 0
        )

    def read(data: bytes) -> CheckInput:
        attributes = _parse(data).attributes
        headers = attributes.request.http.headers
        if headers and data.find(_PREFIX_BYTES) < 0:
            # the common case: a route named in the context, headers, none of ours sent
            # (a protobuf map's [] would insert "" for a missing key: .get it is)
            route = attributes.context_extensions.get("route")
            facts = (route, None, "", headers.get("authorization"), (), None, None)
            return _NEW_FACTS(RequestFacts, facts), headers, attributes
        return _read(attributes, "context", None)

    return read


def read_check_request(request: Any, route_identity: str = "context") -> CheckInput:
    """CheckInput of a parsed CheckRequest (tests, tools); the server reads bytes through
    `check_input_reader`."""
    return _read(request.attributes, route_identity, None)


def llm_request_of(attributes: Any) -> LlmRequest:
    """What an `api: openai` request asks for: its method, path (the query too), content
    type and body (Envoy sends the body on these routes only: `with_request_body`,
    `pack_as_bytes`; a body sent as a string is read as its UTF-8 bytes)."""
    http = attributes.request.http
    body: bytes = http.raw_body or http.body.encode("utf-8", "surrogateescape")
    headers = http.headers
    content_type = headers.get("content-type") if headers else _header_of(http, "content-type")
    return read_model_request(body, http.method, http.path, content_type)


def _header_of(http: Any, name: str) -> str | None:
    """A header from `header_map` (Envoy fills it instead of `headers` when
    `encode_raw_headers` is set); several are joined with a comma, as Envoy does."""
    found = [
        h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value
        for h in http.header_map.headers
        if h.key == name
    ]
    return ",".join(found) if found else None


def client_of(attributes: Any) -> tuple[str, str | None]:
    """Where the client is, from a CheckInput's attributes: its address (Envoy's `source`)
    and the `network` its route's context names ("internal" or None)."""
    address: str = attributes.source.address.socket_address.address
    network: str | None = attributes.context_extensions.get("network")
    return address, network


def _read(attributes: Any, route_identity: str, prefix_seen: bool | None) -> CheckInput:
    """`prefix_seen`: whether the request's bytes hold "x-extauthz-" at all (False: no
    header name can start with it); None: unknown, look at every name."""
    http = attributes.request.http
    target = None
    if route_identity == "context":
        route = attributes.context_extensions.get("route")
    elif route_identity == "match":
        route, target = None, (http.host, http.path)
    else:
        route = _route_from_metadata(attributes.route_metadata_context, route_identity)
    headers = http.headers
    if headers:
        authorization = headers.get("authorization")
        sent = (
            tuple(k for k in headers if k.startswith(IDENTITY_PREFIX))
            if prefix_seen is not False
            else ()
        )
    else:
        # Envoy fills header_map instead of headers when `encode_raw_headers` is set.
        authorization = None
        headers = NO_HEADERS
        names = []
        for h in http.header_map.headers:
            if h.key == "authorization":
                value = h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value
                # several authorization headers: join them as Envoy does, which is malformed
                authorization = value if authorization is None else f"{authorization},{value}"
            elif h.key.startswith(IDENTITY_PREFIX):
                names.append(h.key)
        sent = tuple(names)
    facts = (route, None, "", authorization, sent, target, None)
    return _NEW_FACTS(RequestFacts, facts), headers, attributes


def _route_from_metadata(metadata: Any, route_identity: str) -> str | None:
    """`metadata`: filter_metadata["extauthz"]["route"]; `envoy-gateway`:
    filter_metadata["envoy-gateway"]["resources"][0]["annotations"]["extauthz-route"].
    Anything missing or of another type: None (404)."""
    namespaces = metadata.filter_metadata
    if route_identity == "metadata":
        found = namespaces.get(METADATA_NAMESPACE)
        name = found.fields.get("route") if found is not None else None
    else:
        found = namespaces.get(GATEWAY_NAMESPACE)
        resources = _of_kind(
            found.fields.get("resources") if found is not None else None, "list_value"
        )
        items: Any = resources.values if resources is not None else []
        first = _of_kind(items[0], "struct_value") if len(items) else None
        notes = (
            _of_kind(first.fields.get("annotations"), "struct_value") if first is not None else None
        )
        name = notes.fields.get(GATEWAY_ANNOTATION) if notes is not None else None
    text = _of_kind(name, "string_value")
    return str(text) if text else None


def _of_kind(value: Any, kind: str) -> Any:
    """A protobuf Value's content when it is of `kind` (list_value, struct_value,
    string_value), else None."""
    if value is None or value.WhichOneof("kind") != kind:
        return None
    return getattr(value, kind)


def _header(key: str, value: str) -> Any:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, value=value),
        append_action=_OVERWRITE,
        keep_empty_value=True,
    )


# Decisions repeat (same token, same route): their bytes are kept, bounded by entries and
# bytes; a decision removing many client-named headers is serialized every time instead.
_SERIALIZED: BoundedDict[Decision, bytes] = BoundedDict(4096, 8 << 20)
_BY_IDENTITY: BoundedDict[int, tuple[Decision, bytes]] = BoundedDict(4096, 8 << 20)
_SERIALIZED_MAX_REMOVALS = 6  # authorization + up to 5 client-sent x-extauthz-* names
# id(decision) → (decision, its bytes): what check_response_bytes found first, for a
# handler that has a remembered decision (check that [0] is the decision: ids are reused)
known_response_bytes = _BY_IDENTITY.get


def check_response_bytes(decision: Decision, request_id: str = "") -> bytes:
    """The serialized CheckResponse (cached for the decisions that recur). A denial's body
    carries `request_id`, so that a user can quote it and an operator find the log line."""
    if decision.outcome is not Outcome.ALLOW and decision.body.endswith("}"):
        request_id = shown_request_id(request_id)
        if request_id:
            body = f"{decision.body[:-1]}, {json.dumps('request_id')}: {json.dumps(request_id)}}}"
            return bytes(check_response(replace(decision, body=body)).SerializeToString())
    # the decision memo hands out the same object for a repeated request: found by identity
    # (hashing a Decision walks all its fields); the object is kept, so its id stays its own
    known = _BY_IDENTITY.get(id(decision))
    if known is not None and known[0] is decision:
        return known[1]
    if decision.response_headers:  # (made for this request alone: never kept, so not above)
        return bytes(check_response(decision).SerializeToString())
    kept = len(decision.remove_headers) <= _SERIALIZED_MAX_REMOVALS
    data = _SERIALIZED.get(decision)
    if data is None:
        data = check_response(decision).SerializeToString()
        if kept:  # the Decision key holds about the same strings as the bytes
            _SERIALIZED.put(decision, data, ENTRY_OVERHEAD + 2 * len(data))
    if kept:
        _BY_IDENTITY.put(id(decision), (decision, data), ENTRY_OVERHEAD + 2 * len(data))
    return data


def metadata_bytes(key: str, value: str) -> bytes:
    """A CheckResponse holding only dynamic metadata `key: value`. Appended to another's
    bytes it adds that field to its metadata (a message field given twice is merged), and
    the bytes kept for a decision stay as they are (runtime/tracing.py adds a traceparent)."""
    metadata = struct_pb2.Struct()
    metadata[key] = value
    return bytes(CheckResponse(dynamic_metadata=metadata).SerializeToString())


def check_response(decision: Decision) -> Any:
    """The CheckResponse for a decision.

    ERROR is sent as `error_response` with status UNAVAILABLE, so that Envoy applies its
    `status_on_error` (503) instead of treating it as an ordinary deny.
    """
    if decision.outcome is Outcome.ALLOW:
        metadata = struct_pb2.Struct()
        metadata.update(dict(decision.metadata))
        return CheckResponse(
            status=_OK,
            ok_response=external_auth_pb2.OkHttpResponse(
                headers=[_header(k, v) for k, v in decision.headers],
                headers_to_remove=decision.remove_headers,
                response_headers_to_add=[_header(k, v) for k, v in decision.response_headers],
            ),
            dynamic_metadata=metadata,
        )
    http_response = external_auth_pb2.DeniedHttpResponse(
        status=http_status_pb2.HttpStatus(code=decision.status),
        headers=[_header(k, v) for k, v in decision.headers],
        body=decision.body,
    )
    if decision.outcome is Outcome.ERROR:
        return CheckResponse(status=_UNAVAILABLE, error_response=http_response)
    return CheckResponse(
        status=_DENIED_STATUS.get(decision.status, _DENIED_STATUS[403]),
        denied_response=http_response,
    )


CheckHandler = Callable[[Any, Any], bytes]


class Decides(Protocol):
    """What decides a Check (runtime/authorizer.py's Authorizer)."""

    def decide(
        self, facts: RequestFacts, headers: Mapping[str, str], attributes: Any
    ) -> Decision: ...


def check_handler(authorizer: Decides) -> CheckHandler:
    """envoy.service.auth.v3.Authorization/Check: a CheckInput (see `check_input_reader`)
    in, response bytes out."""
    decide = authorizer.decide
    known = known_response_bytes

    def check(read: CheckInput, context: Any) -> bytes:
        facts, headers, attributes = read
        decision = decide(facts, headers, attributes)
        if decision.outcome is _ALLOW:
            found = known(id(decision))  # a remembered decision: its bytes as they were sent
            if found is not None and found[0] is decision:
                return found[1]
            return check_response_bytes(decision)
        return check_response_bytes(decision, headers.get("x-request-id", ""))

    return check
