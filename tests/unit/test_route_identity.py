"""Route identity behind gateways (docs/design.md#route-identity): where the route's name comes
from in each `--route-identity` mode, the policy's match rules, and that every mode fails
closed."""

from __future__ import annotations

import time
from typing import Any

import pytest
from envoy.service.auth.v3 import external_auth_pb2
from google.protobuf import struct_pb2

from extauthz.core.policy import PolicySnapshot, parse_policy
from extauthz.core.route_match import RouteMatcher, canonical_path, normal_host
from extauthz.errors import PolicyError
from extauthz.runtime.authorizer import Authorizer
from extauthz.runtime.envoy_check import facts_from_check_request
from extauthz.storage.store import Store

POLICY = """
version: 1
routes:
  iris:
    access: protected
    match: [{host: models.example.com, path_prefix: /v2/models/iris}]
  iris-any-host:
    access: protected
    match: [{path_prefix: /v2/models/iris}]
  models:
    access: public
    match: [{path_prefix: /v2/models}]
  root:
    access: public
    match: [{host: other.example.com, path_prefix: /}]
"""


def snapshot(text: str = POLICY) -> PolicySnapshot:
    return PolicySnapshot(1, parse_policy(text).routes)


@pytest.fixture
def matcher() -> RouteMatcher:
    return snapshot().matcher


@pytest.mark.parametrize(
    ("host", "path", "route"),
    [
        ("models.example.com", "/v2/models/iris", "iris"),
        ("models.example.com", "/v2/models/iris/infer", "iris"),
        ("models.example.com", "/v2/models/iris/", "iris"),
        ("models.example.com", "/v2/models/iris?x=/../y", "iris"),  # the query is ignored
        ("Models.Example.COM:8443", "/v2/models/iris", "iris"),  # case and port
        ("models.example.com.", "/v2/models/iris", "iris"),  # a trailing dot
        ("elsewhere.example.com", "/v2/models/iris", "iris-any-host"),
        ("", "/v2/models/iris", None),  # no host: nothing matches, not even any-host rules
        ("models.example.com", "/v2/models/iris2", "models"),  # segment boundaries
        ("models.example.com", "/v2/models", "models"),
        ("models.example.com", "/v2/modelsx", None),
        ("models.example.com", "/", None),
        ("other.example.com", "/anything/at/all", "root"),
        ("other.example.com", "/v2/models/iris", "iris-any-host"),  # longest prefix wins
        ("[::1]:8080", "/v2/models/iris/x", "iris-any-host"),
    ],
)
def test_longest_prefix_on_segment_boundaries(
    matcher: RouteMatcher, host: str, path: str, route: str | None
) -> None:
    assert matcher.resolve(host, path) == route


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/iris/../x", "/v2/models/iris/..", "/v2/models/./iris", "/v2/models/iris/.",
        "/v2/models/iris/%2e%2e/x", "/v2/models/iris/%2E%2e", "/v2/models/iris/.%2e/x",
        "/v2/models/iris/%2e", "//v2/models/iris", "/v2//models/iris", "/v2/models/iris//x",
        "/v2/models%2Firis", "/v2/models%2firis", "/v2/models/iris%5Cx", "/v2/models/iris%5cx",
        "/v2/models/iris\\x", "/v2/models/iris;x=1", "/v2/models/iris%00", "/v2/models/iris\x00",
        "/v2/models/iris\r\n", "/v2/models/iris\x1b", "/v2/models/iris#frag", "v2/models/iris",
        "", "*", "http://models.example.com/v2/models/iris",
        # any escape at all: decoded, these name the protected model
        "/v2/models/ir%69s/infer", "/v2/%6dodels/iris/infer", "/v2/models/iris/%41",
        "/v2/models/%25", "/v2/models/iris%", "/v2/models/iris/caf\u00e9", "/v2/models/ｉris",
    ],
)  # fmt: skip
def test_paths_that_are_not_canonical_match_nothing(matcher: RouteMatcher, path: str) -> None:
    assert canonical_path(path) is None
    assert matcher.resolve("models.example.com", path) is None
    assert matcher.resolve("other.example.com", path) is None  # not even the `/` rule


def test_canonical_paths_that_look_odd_still_match(matcher: RouteMatcher) -> None:
    for path in (
        "/v2/models/iris/...",
        "/v2/models/iris/.x",
        "/v2/models/iris/x..",
    ):
        assert canonical_path(path) is not None, path
        assert matcher.resolve("models.example.com", path) == "iris", path
    assert matcher.resolve("models.example.com", "/v2/models/iris/" + "a/" * 5000) == "iris"


@pytest.mark.parametrize(
    "host",
    [
        "models.example.com:",  # an empty port
        "models.example.com:abc",
        "models.example.com:123456",
        "user@models.example.com",
        "models%2eexample.com",
        "ｍodels.example.com",  # a fullwidth letter
        "models.example.com\x00",
        "models example.com",
        "models.example.com/x",
        "[::1",
        "[zz::1]:80",
        "-models.example.com",
        "a" * 300,
        "",
    ],
)
def test_hosts_that_are_not_names_match_nothing(matcher: RouteMatcher, host: str) -> None:
    """An odd host never falls back to the rules for any host (the public `/v2/models` here),
    let alone reaches the protected model."""
    for path in ("/v2/models/iris/infer", "/v2/models", "/"):
        assert matcher.resolve(host, path) is None, (host, path)


def test_public_rules_that_cover_protected_paths_are_warned_about() -> None:
    (warning,) = [w for w in parse_policy(POLICY, "p.yaml").warnings if "models.example.com" in w]
    assert warning.startswith("p.yaml:12: routes.models.match[0]: public rule")
    warnings = parse_policy(POLICY, "p.yaml").warnings
    assert len(warnings) == 2  # /v2/models covers iris's and iris-any-host's rules
    narrow = POLICY.replace("path_prefix: /v2/models}", "path_prefix: /v2/models/list}")
    assert parse_policy(narrow).warnings == ()


def test_hosts() -> None:
    assert normal_host("Models.Example.com:8443") == "models.example.com"
    assert normal_host("[::1]:80") == "[::1]"
    assert normal_host("example.com.") == "example.com"
    assert normal_host("example.com:notaport") == "example.com:notaport"


@pytest.mark.parametrize(
    ("rules", "key", "message"),
    [
        ("[{path_prefix: v2}]", "match[0].path_prefix", "must start with /"),
        ("[{path_prefix: /a/../b}]", "match[0].path_prefix", "not a canonical path"),
        ("[{path_prefix: '/a//b'}]", "match[0].path_prefix", "not a canonical path"),
        ("[{path_prefix: '/a%2Fb'}]", "match[0].path_prefix", "not a canonical path"),
        ("[{path_prefix: '/a?b=1'}]", "match[0].path_prefix", "not a canonical path"),
        ("[{path_prefix: /a;b}]", "match[0].path_prefix", "not a canonical path"),
        ("[{path_prefix: 7}]", "match[0].path_prefix", "must be a string"),
        ("[{host: 'https://m.example.com', path_prefix: /}]", "match[0].host", "without scheme"),
        ("[{host: 'm.example.com/v2', path_prefix: /}]", "match[0].host", "without scheme"),
        ("[{host: 'm.example.com:443', path_prefix: /}]", "match[0].host", "no port"),
        ("[{host: '*.example.com', path_prefix: /}]", "match[0].host", "not a host name"),
        ("[{host: 'a b', path_prefix: /}]", "match[0].host", "not a host name"),
        ("[{host: m.example.com}]", "match[0].path_prefix", "missing"),
        ("[{path_prefix: /a, methods: [GET]}]", "match[0].methods", "unknown key"),
        ("[]", "match", "must be a list"),
        ("{path_prefix: /a}", "match", "must be a list"),
        ("[{path_prefix: /a}, {path_prefix: /a/}]", "match[1]", "same host and path_prefix"),
    ],
)
def test_match_rules_are_validated_with_file_line_and_key(
    rules: str, key: str, message: str
) -> None:
    text = f"version: 1\nroutes:\n  r:\n    access: public\n    match: {rules}\n"
    with pytest.raises(PolicyError) as e:
        parse_policy(text, "policy.yaml")
    assert str(e.value).startswith(f"policy.yaml:5: routes.r.{key}"), str(e.value)
    assert message in str(e.value)


def test_identical_rules_in_two_routes_name_both() -> None:
    text = """version: 1
routes:
  a:
    access: public
    match: [{host: M.example.com, path_prefix: /x}]
  b:
    access: public
    match: [{host: m.example.com, path_prefix: /x/}]
"""
    with pytest.raises(
        PolicyError, match=r"policy.yaml:8: routes.b.match\[0\]: .*routes.a.match\[0\] \(line 5\)"
    ):
        parse_policy(text, "policy.yaml")


def test_match_rules_survive_the_trip_through_redis() -> None:
    published = snapshot()
    loaded = PolicySnapshot.from_json(published.to_json())
    assert loaded.routes == published.routes
    assert loaded.matcher.resolve("models.example.com:1", "/v2/models/iris/x") == "iris"


# --- where each mode reads the route ---------------------------------------------------------


def check_request(
    context: dict[str, str] | None = None,
    metadata: dict[str, Any] | None = None,
    host: str = "models.example.com",
    path: str = "/v2/models/iris",
    headers: dict[str, str] | None = None,
) -> Any:
    req = external_auth_pb2.CheckRequest()
    req.attributes.context_extensions.update(context or {})
    for namespace, value in (metadata or {}).items():
        struct = struct_pb2.Struct()
        struct.update(value)
        req.attributes.route_metadata_context.filter_metadata[namespace].CopyFrom(struct)
    http = req.attributes.request.http
    http.host, http.path = host, path
    http.headers.update(headers or {})
    return req


def gateway(annotations: Any) -> dict[str, Any]:
    return {"envoy-gateway": {"resources": [{"kind": "HTTPRoute", "annotations": annotations}]}}


EVERYTHING = {
    "context": {"route": "from-context", "network": "internal"},
    "metadata": {
        "extauthz": {"route": "from-metadata"},
        **gateway({"extauthz-route": "from-gateway"}),
    },
    "headers": {"x-extauthz-route": "from-header", "x-route": "from-header"},
}


@pytest.mark.parametrize(
    ("mode", "route"),
    [
        ("context", "from-context"),
        ("metadata", "from-metadata"),
        ("envoy-gateway", "from-gateway"),
        ("match", None),
    ],
)
def test_each_mode_reads_its_one_source(mode: str, route: str | None) -> None:
    req = check_request(
        EVERYTHING["context"], EVERYTHING["metadata"], headers=EVERYTHING["headers"]
    )
    facts = facts_from_check_request(req, mode)
    assert facts.route == route
    assert facts.network == "internal"  # where a gateway can set context, it still counts
    if mode == "match":
        assert facts.target == ("models.example.com", "/v2/models/iris")
    else:
        assert facts.target is None


@pytest.mark.parametrize(
    ("mode", "metadata"),
    [
        ("metadata", {}),
        ("metadata", {"extauthz": {}}),
        ("metadata", {"extauthz": {"route": ""}}),
        ("metadata", {"extauthz": {"route": 7}}),
        ("metadata", {"extauthz": {"route": ["a"]}}),
        ("metadata", {"extauthz": {"route": {"name": "a"}}}),
        ("metadata", {"other": {"route": "a"}}),
        ("metadata", gateway({"extauthz-route": "a"})),  # another mode's source
        ("envoy-gateway", {}),
        ("envoy-gateway", {"envoy-gateway": {}}),
        ("envoy-gateway", {"envoy-gateway": {"resources": []}}),
        ("envoy-gateway", {"envoy-gateway": {"resources": "a"}}),
        ("envoy-gateway", {"envoy-gateway": {"resources": ["a"]}}),
        (
            "envoy-gateway",
            {"envoy-gateway": {"resources": {"annotations": {"extauthz-route": "a"}}}},
        ),
        ("envoy-gateway", gateway({})),
        ("envoy-gateway", gateway("a")),
        ("envoy-gateway", gateway({"extauthz-route": 1})),
        ("envoy-gateway", gateway({"gateway.envoyproxy.io/extauthz-route": "a"})),
        ("envoy-gateway", {"extauthz": {"route": "a"}}),  # another mode's source
    ],
)
def test_a_missing_or_malformed_identifier_names_no_route(mode: str, metadata: Any) -> None:
    req = check_request({"route": "from-context"}, metadata, headers={"x-extauthz-route": "a"})
    assert facts_from_check_request(req, mode).route is None


def test_the_authorizer_names_the_route_by_match_before_deciding(store: Store) -> None:
    authorizer = Authorizer(store, clock=time.time)
    authorizer.snapshot = snapshot()
    decide = authorizer.decide
    assert decide(facts_from_check_request(check_request(path="/v2/models"), "match")).status == 200
    iris = decide(facts_from_check_request(check_request(), "match"))
    assert (iris.status, iris.reason) == (401, "no_credential")
    for path in ("/elsewhere", "/v2/models/iris/../x", "/v2//models", "/v2/models%2Firis"):
        denied = decide(facts_from_check_request(check_request(path=path), "match"))
        assert (denied.status, denied.reason) == (404, "unknown_route"), path
    # the context is not read in match mode, however it names the route
    req = check_request({"route": "models"}, path="/elsewhere")
    assert decide(facts_from_check_request(req, "match")).status == 404


@pytest.mark.parametrize("mode", ["context", "metadata", "envoy-gateway", "match"])
def test_network_internal_alone_in_the_context_is_read_in_every_mode(mode: str) -> None:
    # a gateway that names routes some other way may still set network: internal alone
    req = check_request({"network": "internal"}, EVERYTHING["metadata"])
    assert facts_from_check_request(req, mode).network == "internal"
    req = check_request({"route": "r"}, EVERYTHING["metadata"])
    assert facts_from_check_request(req, mode).network is None
