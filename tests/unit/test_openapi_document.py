"""The management API's OpenAPI document: published as docs/openapi.json exactly as the app
generates it, valid OpenAPI, every operation behind the bearer scheme with the statuses and
error shape it really answers and no phantom 422, models that cover what the code builds;
and the checker the integration tests run every answer through refuses what the document
does not list."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute
from openapi_spec_validator import validate

from extauthz.admin import schema
from extauthz.admin.api import (
    audit_api,
    openapi_document,
    policy_api,
    scanning_api,
    teams_api,
    tokens_api,
)
from extauthz.core.budget import Budget
from extauthz.core.policy import Access, JwtSettings, RoutePolicy
from extauthz.core.rate_limit import RateLimit
from extauthz.core.route_match import MatchRule
from extauthz.core.token_limit import TokenLimit
from extauthz.core.token_record import TokenRecord
from extauthz.storage.store import TOKEN_KINDS
from tests.support.admin_api import Conformance

REPO = Path(__file__).resolve().parents[2]
DOCUMENT = openapi_document()
OPERATIONS = [
    (method.upper(), path, operation)
    for path, operations in DOCUMENT["paths"].items()
    for method, operation in operations.items()
]
ERRORS = {400: "invalid_request", 401: "unauthorized", 403: "forbidden", 409: "malformed_record",
          429: "rate_limited", 503: "unavailable"}  # fmt: skip


def test_docs_openapi_json_is_what_the_app_generates(tmp_path: Path) -> None:
    generated = tmp_path / "openapi.json"
    subprocess.run(
        [sys.executable, "scripts/openapi.py", str(generated)],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    assert json.loads(generated.read_text()) == DOCUMENT
    assert (REPO / "docs/openapi.json").read_text() == generated.read_text(), (
        "docs/openapi.json is not the API's document: regenerate it with "
        "`.venv/bin/python scripts/openapi.py` and commit it"
    )


def test_it_is_valid_openapi_and_names_every_route_of_the_api() -> None:
    validate(DOCUMENT)
    routes = {
        (method, route.path)
        for router in (tokens_api, teams_api, policy_api, audit_api, scanning_api)
        for route in router.routes
        if isinstance(route, APIRoute)
        for method in route.methods or ()
    }
    assert routes == {(method, path) for method, path, _ in OPERATIONS}
    assert len({op["operationId"] for _, _, op in OPERATIONS}) == len(OPERATIONS)


def test_every_operation_takes_the_bearer_token() -> None:
    """No operation of the document is public (the console's files and /openapi.json, which
    are, are not operations of it)."""
    scheme = DOCUMENT["components"]["securitySchemes"]["bearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for method, path, operation in OPERATIONS:
        if (method, path) == SCANNING:  # GitHub's signature is its credential
            assert operation["security"] == [], (method, path)
            headers = {p["name"] for p in operation["parameters"] if p["required"]}
            assert headers == {"Github-Public-Key-Identifier", "Github-Public-Key-Signature"}
            continue
        assert operation.get("security") == [{"bearer": []}], (method, path)


SCANNING = ("POST", "/v1/secret-scanning")


def test_no_operation_lists_422_and_every_one_its_errors_in_the_one_shape() -> None:
    assert "HTTPValidationError" not in json.dumps(DOCUMENT)
    schemas = DOCUMENT["components"]["schemas"]
    for method, path, operation in OPERATIONS:
        responses = operation["responses"]
        assert "422" not in responses, (method, path)
        expected: dict[int, str | list[str]] = dict(ERRORS)
        if "{token_id}" in path or "{team_id}" in path or (method, path) == ("GET", "/v1/tokens"):
            expected[404] = "not_found"  # (the list: ?team= of a team it may not see)
        if (method, path) in (("POST", "/v1/teams"), ("DELETE", "/v1/teams/{team_id}")):
            expected[409] = ["conflict", "malformed_record"]  # (exists / has tokens)
        if (method, path) == SCANNING:  # (no token: no 403; it reads no record: no 409)
            expected = {s: e for s, e in ERRORS.items() if s not in (403, 409)}
        errors = {int(s): r for s, r in responses.items() if int(s) >= 400}
        assert set(errors) == set(expected), (method, path)
        for status, response in errors.items():
            ref = response["content"]["application/json"]["schema"]["$ref"]
            error = schemas[ref.rpartition("/")[2]]
            assert sorted(error["required"]) == ["error", "message"], ref
            assert error["additionalProperties"] is False
            code = error["properties"]["error"]
            assert code.get("const", code.get("enum")) == expected[status], (path, status)
        assert all(r.get("description") for r in responses.values()), (method, path)
    successes = {
        (method, path): sorted(int(s) for s in op["responses"] if int(s) < 400)
        for method, path, op in OPERATIONS
    }
    assert successes.pop(("POST", "/v1/tokens")) == [201]
    assert successes.pop(("POST", "/v1/teams")) == [201]
    assert successes.pop(("DELETE", "/v1/tokens/{token_id}")) == [200, 204]
    assert set(map(tuple, successes.values())) == {(200,)}


def test_bodies_and_pages_are_typed() -> None:
    schemas = DOCUMENT["components"]["schemas"]
    (cursor,) = [
        p for p in DOCUMENT["paths"]["/v1/tokens"]["get"]["parameters"] if p["name"] == "cursor"
    ]
    next_cursor = schemas["TokenPage"]["properties"]["next_cursor"]
    assert (
        cursor["schema"]["anyOf"]
        == next_cursor["anyOf"]
        == [
            {"type": "string"},
            {"type": "null"},
        ]
    )
    for name in ("NewToken", "TokenChange", "Rotation"):
        assert schemas[name]["additionalProperties"] is False, name  # unknown fields: 400
    create = DOCUMENT["paths"]["/v1/tokens"]["post"]["requestBody"]
    assert create["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/NewToken"
    }
    for method, path, operation in OPERATIONS:
        for status, response in operation["responses"].items():
            if status == "204":
                assert "content" not in response
                continue
            body = response["content"]["application/json"]["schema"]
            assert "$ref" in body, (method, path, status)  # a named model, never a bare object


def _every_field_set() -> RoutePolicy:
    """A route whose every setting differs from its default (so to_json names them all)."""
    return RoutePolicy(
        name="r",
        access=Access.PROTECTED,
        credentials=("bearer", "basic"),
        credentials_listed=True,
        basic_username="u",
        scopes=frozenset({"s"}),
        jwt=JwtSettings(
            "https://issuer.example",
            ("aud",),
            models_claim="models",
            forward_claims=(("sub", "x-extauthz-sub"),),
        ),
        max_token_ttl=60,
        rate_limit=RateLimit.parse("1/s"),
        match=(MatchRule("llm.example", "/v1/"),),
        api="openai",
        models=("m",),
        token_limit=TokenLimit.parse("10/d"),
        stream_usage="require",
        default_max_tokens=5,
        budget=Budget.parse("5/d"),
    )


def test_the_models_cover_what_the_code_builds() -> None:
    """A key added to an answer without its model makes that answer a 500: caught here."""
    route = _every_field_set()
    unset = [
        f.name
        for f in dataclasses.fields(RoutePolicy)
        if f.name != "name" and getattr(route, f.name) == f.default
    ]
    assert not unset, f"give {unset} a value other than its default in this test"
    shown = route.to_json()
    assert set(shown) == set(schema.Route.model_fields), "update admin/schema.py Route"
    schema.Route.model_validate(shown)
    record = TokenRecord("t", frozenset({"a"}), frozenset(), expires_at=1, name="n", created_at=0)
    assert set(record.to_json()) == set(schema.Token.model_fields), "update admin/schema.py Token"
    # (usage shows what responses cost in USD, counted in micro-dollars)
    shown_kinds = {"cost_usd" if kind == "cost_microusd" else kind for kind in TOKEN_KINDS}
    assert shown_kinds | {"requests"} == set(schema.ModelUsage.model_fields)


def _check(status: int, body: Any, method: str = "GET", path: str = "/v1/tokens/t") -> None:
    Conformance(DOCUMENT).check(
        method,
        path,
        {"authorization": "Bearer eat_x"},
        None,
        status,
        {"content-type": "application/json"},
        json.dumps(body).encode(),
    )


TOKEN = TokenRecord("t", frozenset({"a"}), frozenset()).to_json()


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (418, {"error": "teapot", "message": "m"}),  # a status it does not list
        (422, {"detail": []}),  # FastAPI's own, never answered here
        (404, {"error": "forbidden", "message": "m"}),  # another status's code
        (400, {"error": "invalid_request"}),  # no message
        (200, {**TOKEN, "secret_hash": "x"}),  # a field it does not name
        (200, {**TOKEN, "kind": "root"}),
        (200, {k: v for k, v in TOKEN.items() if k != "expires_at"}),
    ],
)
def test_the_checker_fails_what_the_document_does_not_list(status: int, body: Any) -> None:
    with pytest.raises(AssertionError, match="not as the document says"):
        _check(status, body)


def test_the_checker_passes_what_it_lists() -> None:
    _check(200, TOKEN)
    _check(404, {"error": "not_found", "message": "no token with id 't'"})
    _check(200, {"tokens": [TOKEN], "next_cursor": "14"}, path="/v1/tokens")
    with pytest.raises(AssertionError, match="not as the document says"):
        _check(200, {"tokens": [TOKEN], "next_cursor": 14.0}, path="/v1/tokens")
    with pytest.raises(AssertionError, match="not an operation"):
        _check(200, {}, path="/v1/tokenz")
