from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from extauthz.core.policy import Access, PolicySnapshot, load_policy_file, parse_policy
from extauthz.errors import PolicyError

EXAMPLE = textwrap.dedent(
    """\
    version: 1
    internal_networks: [10.0.0.0/8]
    routes:
      densenet161:
        access: protected
        credentials: [bearer, basic]
        basic_username: paperspace
        scopes: [inference]
      densenet161-management:
        access: protected
        scopes: [management]
      healthz:
        access: public
      embedder:
        access: private
      iris:
        access: protected
        credentials: [jwt]
        jwt:
          issuer: https://idp.example.com/realms/deploy
          audiences: [sd-api]
          jwks_uri: https://idp.example.com/realms/deploy/protocol/openid-connect/certs
          scopes_claim: scope
    secrets:
      - id: densenet161-basic
        routes: [densenet161]
        scopes: [inference]
        from_env: DENSENET161_SECRET
    """
)


def test_design_example_parses() -> None:
    doc = parse_policy(EXAMPLE, "p.yaml")
    assert set(doc.routes) == {
        "densenet161",
        "densenet161-management",
        "healthz",
        "embedder",
        "iris",
    }
    d = doc.routes["densenet161"]
    assert d.access is Access.PROTECTED and d.credentials == ("bearer", "basic")
    assert doc.routes["healthz"].credentials == ("bearer",)
    assert not doc.routes["embedder"].credentials_listed
    assert doc.routes["iris"].jwt is not None
    assert doc.secrets[0].from_env == "DENSENET161_SECRET"
    assert doc.secrets[0].line == 28  # the from_env line


def test_snapshot_json_round_trip() -> None:
    doc = parse_policy(EXAMPLE)
    snap = PolicySnapshot(3, doc.routes, doc.internal_networks, {})
    back = PolicySnapshot.from_json(snap.to_json())
    assert back == snap
    assert back.digest() == snap.digest()
    assert back.is_internal_address("10.9.9.9") and not back.is_internal_address("11.0.0.1")


@pytest.mark.parametrize(
    ("text", "line", "key", "fragment"),
    [
        ("", None, "", "empty"),
        ("version: 1\nroutes: {a: {access: public}\n", 3, "", "YAML syntax"),
        ("routes: {}\n", 1, "version", "missing"),
        ("version: 2\nroutes: {}\n", 1, "version", "unsupported"),
        ("version: 1\n", 1, "routes", "missing"),
        ("version: 1\nroutes: {}\nextra: 1\n", 3, "extra", "unknown key"),
        (
            "version: 1\nroutes:\n  a:\n    access: public\n    acces: x\n",
            5,
            "routes.a.acces",
            "unknown key",
        ),
        (
            "version: 1\nroutes:\n  a: {access: public}\n  a: {access: private}\n",
            4,
            "routes.a",
            "duplicate",
        ),
        ("version: 1\nroutes:\n  a: {access: open}\n", 3, "routes.a.access", "not public"),
        ("version: 1\nroutes:\n  a: {}\n", 3, "routes.a.access", "missing"),
        ("version: 1\nroutes:\n  a: {access: 1}\n", 3, "routes.a.access", "string"),
        (
            "version: 1\nroutes:\n  a: {access: protected, scopes: inference}\n",
            3,
            "routes.a.scopes",
            "list",
        ),
        (
            "version: 1\nroutes:\n  a: {access: protected, credentials: [token]}\n",
            3,
            "routes.a.credentials[0]",
            "not one of",
        ),
        (
            "version: 1\nroutes:\n  a: {access: protected, credentials: [basic]}\n",
            3,
            "routes.a.basic_username",
            "required",
        ),
        (
            "version: 1\nroutes:\n  a: {access: protected, credentials: [jwt]}\n",
            3,
            "routes.a.jwt",
            "required",
        ),
        ("version: 1\nroutes:\n  'a b': {access: public}\n", 3, "routes.a b", "route names"),
        (
            "version: 1\ninternal_networks: [nope]\nroutes: {}\n",
            2,
            "internal_networks[0]",
            "not a network",
        ),
        (
            "version: 1\nroutes: {a: {access: public}}\nsecrets:\n  - id: s\n    routes: [b]\n    from_env: X\n",
            5,
            "secrets[0].routes[0]",
            "no route",
        ),
        (
            "version: 1\nroutes: {a: {access: public}}\nsecrets:\n  - id: s\n    routes: [a]\n",
            4,
            "secrets[0].from_env",
            "exactly one",
        ),
        (
            "version: 1\nroutes: {a: {access: public}}\nsecrets:\n  - {id: s, routes: [a], from_env: X}\n  - {id: s, routes: [a], from_env: Y}\n",
            5,
            "secrets[1].id",
            "duplicate",
        ),
        (
            "version: 1\nroutes: {a: {access: protected, credentials: [jwt], jwt: {issuer: x, audiences: [a], algorithms: [HS256]}}}\n",
            2,
            "routes.a.jwt.algorithms[0]",
            "not allowed",
        ),
        ("- 1\n- 2\n", 1, "", "mapping"),
        (
            "version: 1\nroutes:\n  a:\n    access: protected\n    credentials: [jwt]\n    jwt:\n      issuer: https://i\n      audiences: [x]\n      forward_claims: {email: x-email}\n",
            9,
            "routes.a.jwt.forward_claims.email",
            "x-extauthz-",
        ),
        (
            "version: 1\nroutes:\n  a:\n    access: protected\n    credentials: [jwt]\n    jwt: {issuer: idp.example.com, audiences: [x]}\n",
            6,
            "routes.a.jwt.issuer",
            "http(s) URL",
        ),
        (
            "version: 1\nroutes:\n  a:\n    access: protected\n    credentials: [jwt]\n    jwt: {issuer: https://i}\n",
            6,
            "routes.a.jwt.audiences",
            "missing",
        ),
        (
            "version: 1\nroutes:\n  a:\n    access: protected\n    jwt: {issuer: https://i, audiences: [a]}\n",
            5,
            "routes.a.jwt",
            "credentials do not list jwt",
        ),
    ],
)
def test_errors_name_line_and_key(text: str, line: int | None, key: str, fragment: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.yaml")
    err = info.value
    assert (err.file, err.line, err.key) == ("p.yaml", line, key)
    assert fragment in err.message
    assert str(err).startswith("p.yaml")


def test_load_file_errors(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy_file(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(PolicyError, match="UTF-8"):
        load_policy_file(str(bad))
