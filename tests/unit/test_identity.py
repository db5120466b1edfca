"""Credential kinds: the registry is the one place a kind is added (docs/architecture.md)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from extauthz.core import identity
from extauthz.core.credentials import BearerCredential, Credential
from extauthz.core.decision import RequestFacts, challenge, decide
from extauthz.core.identity.base import Context, Identity, IdentityResult, Rejected
from extauthz.core.policy import PolicySnapshot, parse_policy
from extauthz.dev.envoy_config import COMPOSE, bootstrap


@dataclass(frozen=True)
class Shared:
    """A toy kind: one shared key, given as a Bearer token, for routes that list `shared`."""

    name: str = "shared"
    scheme: str = "Bearer"
    headers: tuple[str, ...] = ("authorization", "x-client-id")

    def identify(self, credential: Credential, ctx: Context) -> IdentityResult | None:
        if not isinstance(credential, BearerCredential):
            return None
        if credential.token != "open-sesame":
            return Rejected("wrong_key", "invalid key")
        return Identity("sesame", frozenset({"inference"}), frozenset({"m"}), "granted_shared")


def test_a_new_kind_is_one_module_and_one_registration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(identity.KINDS, "shared", Shared())  # the one registration line
    doc = parse_policy(
        "version: 1\nroutes:\n"
        "  m: {access: protected, credentials: [shared], scopes: [inference]}\n"
        "  other: {access: protected, credentials: [shared]}\n"
    )
    snapshot = PolicySnapshot(1, doc.routes)

    def ask(route: str, token: str) -> tuple[int, str]:
        facts = RequestFacts(route, authorization=f"Bearer {token}")
        decision = decide(facts, snapshot, lambda digest: None, 0.0)
        return decision.status, decision.reason

    assert ask("m", "open-sesame") == (200, "granted_shared")
    assert ask("m", "nope") == (401, "wrong_key")
    assert ask("other", "open-sesame") == (403, "route_not_granted")  # authorization, as ever
    assert challenge(doc.routes["m"]) == 'Bearer realm="m"'
    ext_authz = bootstrap(COMPOSE)["static_resources"]["listeners"][0]["filter_chains"][0][
        "filters"
    ][0]["typed_config"]["http_filters"][0]["typed_config"]
    assert {"exact": "x-client-id"} in ext_authz["allowed_headers"]["patterns"]


def test_kinds_claim_credentials_in_registry_order() -> None:
    # a JWT-shaped bearer token goes to `jwt` when the route accepts it, else to `bearer`
    assert list(identity.KINDS) == ["jwt", "bearer", "basic"]
    assert identity.request_headers() == ("authorization",)


def test_an_unknown_kind_in_the_policy_is_refused() -> None:
    from extauthz.errors import PolicyError

    with pytest.raises(PolicyError, match="'shared' is not one of: jwt, bearer, basic"):
        parse_policy("version: 1\nroutes:\n  m: {access: protected, credentials: [shared]}\n")
