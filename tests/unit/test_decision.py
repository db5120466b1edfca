"""The decision table (README.md#how-a-request-is-decided, docs/design.md#the-decision), every
access type × credential state."""

from __future__ import annotations

import base64
import ipaddress
import json

import pytest

from extauthz.core.credentials import new_token, token_hash
from extauthz.core.decision import Decision, Outcome, RequestFacts, decide
from extauthz.core.jwt_verify import JwtIdentity, JwtRejected, JwtResult, JwtUnavailable
from extauthz.core.policy import Access, JwtSettings, PolicySnapshot, RoutePolicy
from extauthz.core.rate_limit import RateLimit
from extauthz.core.token_record import TokenRecord
from extauthz.errors import MalformedRecord, StoreUnavailable

NOW = 1_800_000_000.0

GOOD = "eat_good-token-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
OTHER_ROUTE = "eat_other-route-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
EXPIRED = "eat_expired-cccccccccccccccccccccccccccccccccccccc"
MGMT = "eat_management-dddddddddddddddddddddddddddddddddd"
WILDCARD = "eat_wildcard-eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee"
BROKEN = "eat_broken-record-ffffffffffffffffffffffffffffffff"
ADMIN = "eat_admin-gggggggggggggggggggggggggggggggggggggggggg"
MANAGER = "eat_manager-hhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhh"
ROUTE_SECRET = "paperspace-route-secret-1234"

TOKENS = {
    token_hash(GOOD): TokenRecord("t-good", frozenset({"model", "both"}), frozenset({"inference"})),
    token_hash(OTHER_ROUTE): TokenRecord("t-other", frozenset({"elsewhere"}), frozenset()),
    token_hash(EXPIRED): TokenRecord(
        "t-expired", frozenset({"model"}), frozenset({"inference"}), expires_at=int(NOW) - 1
    ),
    token_hash(MGMT): TokenRecord("t-mgmt", frozenset({"model"}), frozenset({"management"})),
    token_hash(WILDCARD): TokenRecord("t-any", frozenset({"*"}), frozenset({"inference"})),
    # management tokens: valid at the management API only, whatever their routes
    token_hash(ADMIN): TokenRecord(
        "t-admin", frozenset({"*"}), frozenset({"admin"}), kind="management"
    ),
    token_hash(MANAGER): TokenRecord(
        "t-manager",
        frozenset({"model", "hidden-auth"}),
        frozenset({"tokens:manage"}),
        kind="management",
    ),
}

ROUTES = {
    "open": RoutePolicy("open", Access.PUBLIC),
    "model": RoutePolicy("model", Access.PROTECTED, scopes=frozenset({"inference"})),
    "both": RoutePolicy(
        "both", Access.PROTECTED, credentials=("bearer", "basic"), basic_username="paperspace"
    ),
    "basic-only": RoutePolicy(
        "basic-only", Access.PROTECTED, credentials=("basic",), basic_username="paperspace"
    ),
    "hidden": RoutePolicy("hidden", Access.PRIVATE),
    "hidden-auth": RoutePolicy("hidden-auth", Access.PRIVATE, credentials_listed=True),
    "jwt-only": RoutePolicy(
        "jwt-only", Access.PROTECTED, credentials=("jwt",), jwt=JwtSettings("https://idp")
    ),
}
SNAPSHOT = PolicySnapshot(
    version=1,
    routes=ROUTES,
    internal_networks=(ipaddress.ip_network("10.0.0.0/8"),),
    secrets={token_hash(ROUTE_SECRET): TokenRecord("both-basic", frozenset({"both"}), frozenset())},
)


def lookup(digest: str) -> TokenRecord | None:
    if digest == token_hash(BROKEN):
        raise MalformedRecord("broken")
    return TOKENS.get(digest)


def down(digest: str) -> TokenRecord | None:
    raise StoreUnavailable("connection refused")


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def run(route: str | None, auth: str | None = None, **kw: object) -> Decision:
    facts = RequestFacts(route=route, authorization=auth, **kw)  # type: ignore[arg-type]
    return decide(facts, SNAPSHOT, lookup, NOW)


# (route, authorization, extra facts, status, reason)
TABLE = [
    # public: anything goes
    ("open", None, {}, 200, "public"),
    ("open", "Bearer nonsense", {}, 200, "public"),
    ("open", "garbage", {}, 200, "public"),
    # unknown or missing route: 404, fail closed
    ("nope", f"Bearer {GOOD}", {}, 404, "unknown_route"),
    (None, f"Bearer {GOOD}", {}, 404, "unknown_route"),
    ("", None, {}, 404, "unknown_route"),
    # private
    ("hidden", None, {}, 404, "private_external"),
    ("hidden", f"Bearer {GOOD}", {}, 404, "private_external"),
    ("hidden", None, {"network": "internal"}, 200, "internal"),
    ("hidden", None, {"source_address": "10.1.2.3"}, 200, "internal"),
    ("hidden", None, {"source_address": "192.168.1.1"}, 404, "private_external"),
    ("hidden", None, {"network": "external"}, 404, "private_external"),
    ("hidden-auth", None, {"network": "internal"}, 401, "no_credential"),
    ("hidden-auth", f"Bearer {WILDCARD}", {"network": "internal"}, 200, "granted"),
    ("hidden-auth", f"Bearer {WILDCARD}", {}, 404, "private_external"),
    ("hidden-auth", f"Bearer {ADMIN}", {"network": "internal"}, 401, "management_token"),
    ("hidden-auth", f"Bearer {MANAGER}", {"network": "internal"}, 401, "management_token"),
    # protected, bearer
    ("model", None, {}, 401, "no_credential"),
    ("model", f"Bearer {GOOD}", {}, 200, "granted"),
    ("model", f"bearer {GOOD}", {}, 200, "granted"),
    ("model", f"BEARER   {GOOD}  ", {}, 200, "granted"),
    ("model", "Bearer eat_unknown", {}, 401, "unknown_token"),
    ("model", f"Bearer {EXPIRED}", {}, 401, "expired_token"),
    ("model", f"Bearer {OTHER_ROUTE}", {}, 403, "route_not_granted"),
    ("model", f"Bearer {MGMT}", {}, 403, "missing_scope"),
    ("model", f"Bearer {WILDCARD}", {}, 200, "granted"),
    ("model", f"Bearer {BROKEN}", {}, 401, "malformed_record"),
    ("model", f"Bearer {ADMIN}", {}, 401, "management_token"),
    ("model", f"Bearer {MANAGER}", {}, 401, "management_token"),
    ("both", basic("paperspace", ADMIN), {}, 401, "management_token"),
    ("model", basic("paperspace", GOOD), {}, 401, "unsupported_scheme"),
    ("model", "Digest username=x", {}, 401, "unsupported_scheme"),
    # malformed headers
    ("model", "", {}, 401, "malformed_credential"),
    ("model", "Bearer", {}, 401, "malformed_credential"),
    ("model", "Bearer ", {}, 401, "malformed_credential"),
    ("model", GOOD, {}, 401, "malformed_credential"),
    ("model", f"Bearer {GOOD}, Bearer {GOOD}", {}, 401, "malformed_credential"),
    ("model", "Bearer tök", {}, 401, "malformed_credential"),
    ("model", "Bearer " + "a" * 65536, {}, 401, "malformed_credential"),
    # protected, basic with a fixed username; bearer also accepted
    ("both", basic("paperspace", ROUTE_SECRET), {}, 200, "granted"),
    ("both", basic("paperspace", GOOD), {}, 200, "granted"),
    ("both", basic("someone", ROUTE_SECRET), {}, 401, "wrong_basic_username"),
    ("both", basic("paperspace", "wrong-secret"), {}, 401, "unknown_token"),
    ("both", basic("paperspace", ROUTE_SECRET + ":x"), {}, 401, "unknown_token"),
    ("both", f"Bearer {ROUTE_SECRET}", {}, 200, "granted"),
    ("both", "Basic !!!notbase64", {}, 401, "malformed_credential"),
    ("both", "Basic " + base64.b64encode(b"no-colon").decode(), {}, 401, "malformed_credential"),
    ("both", "Basic " + base64.b64encode(b"paperspace:").decode(), {}, 401, "malformed_credential"),
    ("both", "Basic " + base64.b64encode(b"\xff\xfe:x").decode(), {}, 401, "malformed_credential"),
    ("basic-only", f"Bearer {GOOD}", {}, 401, "unsupported_scheme"),
    ("basic-only", basic("paperspace", ROUTE_SECRET), {}, 403, "route_not_granted"),
    # without a JWT verifier (verify_jwt None) a JWT fails closed
    ("jwt-only", "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln", {}, 401, "jwt_unsupported"),
    ("jwt-only", f"Bearer {GOOD}", {}, 401, "unsupported_scheme"),
]


@pytest.mark.parametrize(("route", "auth", "extra", "status", "reason"), TABLE)
def test_decision_table(
    route: str | None, auth: str | None, extra: dict[str, object], status: int, reason: str
) -> None:
    decision = run(route, auth, **extra)
    assert (decision.status, decision.reason) == (status, reason)
    expected = Outcome.ALLOW if status == 200 else Outcome.DENY
    assert decision.outcome is expected
    assert GOOD not in repr(decision)
    assert ROUTE_SECRET not in repr(decision)


def test_allow_sets_identity_and_strips_credentials() -> None:
    d = run("model", f"Bearer {GOOD}", identity_headers_sent=("x-extauthz-subject", "x-extauthz-x"))
    assert dict(d.headers) == {
        "x-extauthz-subject": "t-good",
        "x-extauthz-route": "model",
        "x-extauthz-scopes": "inference",
    }
    # our three identity headers are overwritten; any other x-extauthz-* is removed
    assert d.remove_headers == ("authorization", "x-extauthz-x")


def test_public_allow_is_anonymous_and_still_overwrites_identity() -> None:
    d = run("open", f"Bearer {GOOD}")
    assert dict(d.headers)["x-extauthz-subject"] == "anonymous"
    assert dict(d.headers)["x-extauthz-scopes"] == ""
    assert "authorization" in d.remove_headers


def test_a_failed_checksum_is_refused_without_a_lookup() -> None:
    good = new_token()
    bad = good[:-1] + ("A" if good[-1] != "A" else "B")
    TOKENS[token_hash(good)] = TokenRecord(
        "t-new", frozenset({"model", "both"}), frozenset({"inference"})
    )
    TOKENS[token_hash(bad)] = TOKENS[token_hash(good)]  # (were it looked up, it would pass)
    asked: list[str] = []

    def counted(digest: str) -> TokenRecord | None:
        asked.append(digest)
        return lookup(digest)

    try:
        for auth in (f"Bearer {bad}", basic("paperspace", bad)):
            route = "model" if auth.startswith("Bearer") else "both"
            d = decide(RequestFacts(route, authorization=auth), SNAPSHOT, counted, NOW)
            unknown = decide(
                RequestFacts(route, authorization=auth.replace(bad, "eat_unknown")),
                SNAPSHOT, lookup, NOW,
            )  # fmt: skip
            assert (d.status, d.reason) == (401, "bad_checksum")
            # the client sees exactly what an unknown token gets
            assert (d.headers, d.body) == (unknown.headers, unknown.body)
        assert asked == []
        ok = decide(RequestFacts("model", authorization=f"Bearer {good}"), SNAPSHOT, counted, NOW)
        assert ok.status == 200 and asked == [token_hash(good)]
    finally:
        del TOKENS[token_hash(good)], TOKENS[token_hash(bad)]


def test_a_route_secret_of_the_checksummed_shape_still_works() -> None:
    # route secrets are the operator's own text: the policy's are found before any checksum
    odd = "eat_" + "Q" * 38
    snapshot = PolicySnapshot(
        1, ROUTES, secrets={token_hash(odd): TokenRecord("odd", frozenset({"both"}), frozenset())}
    )
    d = decide(RequestFacts("both", authorization=basic("paperspace", odd)), snapshot, down, NOW)
    assert d.status == 200


def test_unauthorized_challenges() -> None:
    none = run("both", None)
    assert dict(none.headers)["www-authenticate"] == (
        'Bearer realm="both", Basic realm="both", charset="UTF-8"'
    )
    rejected = run("model", "Bearer eat_unknown")
    challenge = dict(rejected.headers)["www-authenticate"]
    assert challenge.startswith('Bearer realm="model", error="invalid_token"')
    assert "eat_unknown" not in challenge
    assert json.loads(rejected.body) == {"error": "unauthorized", "message": "invalid token"}


def test_bodies_are_json_and_not_found_reveals_nothing() -> None:
    private = run("hidden", None)
    unknown = run("no-such-route", None)
    assert (private.status, private.headers, private.body) == (
        unknown.status,
        unknown.headers,
        unknown.body,
    )
    assert json.loads(private.body)["error"] == "not_found"
    assert json.loads(run("model", f"Bearer {MGMT}").body)["error"] == "forbidden"


def test_store_down_is_an_error_never_an_allow() -> None:
    facts = RequestFacts(route="model", authorization=f"Bearer {GOOD}")
    d = decide(facts, SNAPSHOT, down, NOW)
    assert (d.outcome, d.status, d.reason) == (Outcome.ERROR, 503, "store_unavailable")
    # decisions that need no store still work while it is down
    assert decide(RequestFacts(route="open"), SNAPSHOT, down, NOW).status == 200
    assert decide(RequestFacts(route="hidden"), SNAPSHOT, down, NOW).status == 404
    assert decide(RequestFacts(route="model"), SNAPSHOT, down, NOW).status == 401


def test_no_policy_loaded_is_an_error() -> None:
    d = decide(RequestFacts(route="open"), None, lookup, NOW)
    assert (d.outcome, d.status) == (Outcome.ERROR, 503)


def test_expiry_boundary() -> None:
    record = TOKENS[token_hash(EXPIRED)]
    facts = RequestFacts(route="model", authorization=f"Bearer {EXPIRED}")
    assert decide(facts, SNAPSHOT, lookup, record.expires_at - 0.001).status == 200  # type: ignore[operator]
    assert decide(facts, SNAPSHOT, lookup, float(record.expires_at)).status == 401  # type: ignore[arg-type]


# --- JWT routes, with a stand-in verifier (the real one is tested in test_jwt_verify) ------

JWT_SETTINGS = JwtSettings(
    "https://idp.example.com/realms/r", forward_claims=(("email", "x-extauthz-email"),)
)
JWT_ROUTES = {
    "iris": RoutePolicy(
        "iris", Access.PROTECTED, ("jwt",), True, scopes=frozenset({"predict"}), jwt=JWT_SETTINGS
    ),
    "mixed": RoutePolicy("mixed", Access.PROTECTED, ("bearer", "jwt"), True, jwt=JWT_SETTINGS),
}
JWT_SNAPSHOT = PolicySnapshot(2, JWT_ROUTES)
GOOD_JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.good"


def fake_verify(token: str, settings: JwtSettings, now: float) -> JwtResult:
    assert settings is JWT_SETTINGS and now == NOW
    if token == GOOD_JWT:
        return JwtIdentity(
            "alice", frozenset({"predict"}), (("x-extauthz-email", "a@x"),), NOW + 60
        )
    if token.endswith(".nopredict"):
        return JwtIdentity("bob", frozenset({"read"}), (), NOW + 60)
    if token.endswith(".down"):
        return JwtUnavailable("signing keys not available")
    return JwtRejected("invalid signature")


def jwt_decide(route: str, auth: str, **kw: object) -> Decision:
    facts = RequestFacts(route=route, authorization=auth, **kw)  # type: ignore[arg-type]
    return decide(facts, JWT_SNAPSHOT, lookup, NOW, fake_verify)


def test_jwt_allow_forwards_claims_and_overwrites_spoofs() -> None:
    d = jwt_decide(
        "iris", f"Bearer {GOOD_JWT}", identity_headers_sent=("x-extauthz-email", "x-extauthz-other")
    )
    # namespaced by issuer: never a token id's header value or counter
    subject = "jwt:https://idp.example.com/realms/r:alice"
    assert (d.status, d.reason, d.subject) == (200, "granted_jwt", subject)
    assert dict(d.headers)["x-extauthz-subject"] == subject
    assert dict(d.metadata)["subject"] == subject
    assert dict(d.headers)["x-extauthz-email"] == "a@x"
    assert dict(d.headers)["x-extauthz-scopes"] == "predict"
    assert d.remove_headers == ("authorization", "x-extauthz-other")


def test_jwt_outcomes() -> None:
    rejected = jwt_decide("iris", "Bearer eyJx.eyJy.bad")
    assert (rejected.status, rejected.reason) == (401, "invalid_jwt")
    assert dict(rejected.headers)["www-authenticate"] == (
        'Bearer realm="iris", error="invalid_token", error_description="invalid signature"'
    )
    assert jwt_decide("iris", "Bearer eyJx.eyJy.nopredict").status == 403
    # they depend on the IdP's keys too: never reused by the authorizer's memo
    for auth in ("Bearer eyJx.eyJy.bad", "Bearer eyJx.eyJy.nopredict", f"Bearer {GOOD_JWT}"):
        assert jwt_decide("iris", auth).reusable_until is None
    down = jwt_decide("iris", "Bearer eyJx.eyJy.down")
    assert (down.outcome, down.status, down.reason) == (Outcome.ERROR, 503, "jwks_unavailable")
    assert jwt_decide("iris", f"Bearer {GOOD}").reason == "unsupported_scheme"  # opaque on jwt-only
    assert (
        decide(
            RequestFacts("iris", authorization=f"Bearer {GOOD_JWT}"), JWT_SNAPSHOT, lookup, NOW
        ).reason
        == "jwt_unsupported"
    )


def test_route_with_bearer_and_jwt_routes_by_shape() -> None:
    assert jwt_decide("mixed", f"Bearer {GOOD_JWT}").reason == "granted_jwt"
    # an opaque token is looked up as one (t-good is not granted 'mixed')
    assert jwt_decide("mixed", f"Bearer {GOOD}").reason == "route_not_granted"
    assert jwt_decide("mixed", f"Bearer {WILDCARD}").reason == "granted"


def test_a_jwt_subject_never_shares_a_token_ids_counter_or_header() -> None:
    """A JWT whose `sub` equals a token id is another caller: its own route counter and
    subject (docs/design.md#the-decision)."""
    limited = RoutePolicy(
        "limited",
        Access.PROTECTED,
        ("bearer", "jwt"),
        True,
        jwt=JWT_SETTINGS,
        rate_limit=RateLimit(5, "s"),
    )
    snapshot = PolicySnapshot(3, {"limited": limited})
    token = TokenRecord("alice", frozenset({"limited"}), frozenset())

    def verify(token: str, settings: JwtSettings, now: float) -> JwtResult:
        return JwtIdentity("alice", frozenset(), (), NOW + 60)

    def limits(auth: str) -> Decision:
        facts = RequestFacts("limited", authorization=auth)
        return decide(facts, snapshot, {token_hash(GOOD): token}.get, NOW, verify)

    by_token, by_jwt = limits(f"Bearer {GOOD}"), limits(f"Bearer {GOOD_JWT}")
    assert by_token.subject == "alice"
    assert by_jwt.subject == "jwt:https://idp.example.com/realms/r:alice"
    token_keys = {x.scope for x in by_token.limits}
    jwt_keys = {x.scope for x in by_jwt.limits}
    assert token_keys and jwt_keys and not token_keys & jwt_keys
