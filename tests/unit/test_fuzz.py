"""Property tests (hypothesis): hostile input never crashes, never escapes as an exception,
and only ever yields the designed outcomes. About 12,000 generated cases in all."""

from __future__ import annotations

import base64
import ipaddress

from envoy.service.auth.v3 import external_auth_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extauthz.core.credentials import (
    BasicCredential,
    BearerCredential,
    MalformedCredential,
    NoCredential,
    UnsupportedScheme,
    parse_authorization,
    token_hash,
)
from extauthz.core.decision import Outcome, RequestFacts, decide
from extauthz.core.policy import Access, PolicySnapshot, RoutePolicy, parse_policy
from extauthz.core.token_record import TokenRecord
from extauthz.errors import MalformedRecord, PolicyError, StoreUnavailable
from extauthz.runtime.envoy_check import (
    check_response,
    check_response_bytes,
    facts_from_check_request,
)

TOKEN = "eat_fuzz-known-token-0000000000000000000000000"
ROUTES = {
    "pub": RoutePolicy("pub", Access.PUBLIC),
    "prot": RoutePolicy(
        "prot", Access.PROTECTED, ("bearer", "basic"), True, "paperspace", frozenset({"inference"})
    ),
    "priv": RoutePolicy("priv", Access.PRIVATE),
}
SNAPSHOT = PolicySnapshot(1, ROUTES, (ipaddress.ip_network("10.0.0.0/8"),))
RECORDS = {token_hash(TOKEN): TokenRecord("t", frozenset({"prot"}), frozenset({"inference"}))}
DESIGNED = {200, 401, 403, 404, 503}

header_text = st.one_of(
    st.text(max_size=300),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=300),
    st.builds(
        lambda s, t: f"{s} {t}",
        st.sampled_from(["Bearer", "bearer", "Basic", "BASIC", "Digest", ""]),
        st.text(max_size=200),
    ),
    st.builds(lambda b: "Basic " + base64.b64encode(b).decode(), st.binary(max_size=120)),
    st.just(f"Bearer {TOKEN}"),
    st.just("Bearer " + "x" * 70000),
)


def lookup(digest: str) -> TokenRecord | None:
    if digest.startswith("0"):
        raise StoreUnavailable("down")
    if digest.startswith("1"):
        raise MalformedRecord("bad")
    return RECORDS.get(digest)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(header_text)
def test_parse_authorization_total(value: str) -> None:
    result = parse_authorization(value)
    assert isinstance(
        result,
        NoCredential | MalformedCredential | UnsupportedScheme | BearerCredential | BasicCredential,
    )
    if isinstance(result, MalformedCredential):
        assert len(result.reason) < 80  # a fixed text, never the input


@settings(max_examples=200, deadline=None)
@given(
    st.text(
        alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=":"),
        min_size=1,
        max_size=40,
    ),
    st.text(min_size=1, max_size=60),
)
def test_basic_round_trip(user: str, password: str) -> None:
    encoded = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    assert parse_authorization(encoded) == BasicCredential(user, password)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    route=st.one_of(
        st.none(), st.sampled_from(["pub", "prot", "priv", "", "nope"]), st.text(max_size=30)
    ),
    network=st.one_of(
        st.none(), st.sampled_from(["internal", "external", ""]), st.text(max_size=10)
    ),
    source=st.one_of(
        st.just(""),
        st.sampled_from(["10.1.1.1", "8.8.8.8", "::1", "not-an-ip"]),
        st.text(max_size=40),
    ),
    authorization=st.one_of(st.none(), header_text),
    headers=st.dictionaries(st.text(max_size=30), st.text(max_size=100), max_size=8),
)
def test_check_requests_only_yield_designed_outcomes(
    route: str | None,
    network: str | None,
    source: str,
    authorization: str | None,
    headers: dict[str, str],
) -> None:
    req = external_auth_pb2.CheckRequest()
    http = req.attributes.request.http
    http.headers.update(headers)
    if authorization is not None:
        http.headers["authorization"] = authorization
    if route is not None:
        req.attributes.context_extensions["route"] = route
    if network is not None:
        req.attributes.context_extensions["network"] = network
    req.attributes.source.address.socket_address.address = source
    # through the wire format, as grpcio hands it to us
    parsed = external_auth_pb2.CheckRequest.FromString(req.SerializeToString())
    facts = facts_from_check_request(parsed)
    decision = decide(facts, SNAPSHOT, lookup, 1_800_000_000.0)
    assert decision.status in DESIGNED
    assert (decision.outcome is Outcome.ALLOW) == (decision.status == 200)
    if decision.outcome is Outcome.ALLOW:
        assert "authorization" in decision.remove_headers
        assert facts.route in ("pub", "prot", "priv")
    if decision.status == 200 and facts.route == "prot":
        assert authorization is not None and TOKEN in authorization
    assert check_response_bytes(decision) == check_response(decision).SerializeToString()


def test_decisions_without_a_policy_are_errors() -> None:
    assert decide(RequestFacts("pub"), None, lookup, 0.0).status == 503


yaml_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.text(max_size=20),
        st.sampled_from(["public", "protected", "private", "bearer", "basic", "jwt"]),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.sampled_from(
                [
                    "version",
                    "routes",
                    "access",
                    "credentials",
                    "scopes",
                    "basic_username",
                    "jwt",
                    "issuer",
                    "audiences",
                    "secrets",
                    "id",
                    "from_env",
                    "x",
                    "internal_networks",
                ]
            ),
            children,
            max_size=5,
        ),
    ),
    max_leaves=20,
)


@settings(max_examples=1200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=300), yaml_values.map(lambda v: __import__("yaml").safe_dump(v))))
def test_policy_files_give_a_policy_or_a_located_error(text: str) -> None:
    try:
        doc = parse_policy(text, "fuzz.yaml")
    except PolicyError as e:
        assert e.file == "fuzz.yaml"
        assert str(e).startswith("fuzz.yaml")
    else:
        snapshot = PolicySnapshot(1, doc.routes, doc.internal_networks)
        assert PolicySnapshot.from_json(snapshot.to_json()) == snapshot  # parse(render(x)) == x
