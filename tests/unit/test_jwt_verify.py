"""JWT verification with real RSA/EC keys (pure: keys given, clock given)."""

from __future__ import annotations

import json
import time

import jwt
import pytest

from extauthz.core.jwks_keys import parse_jwks
from extauthz.core.jwt_verify import (
    UNKNOWN_KEY,
    JwtIdentity,
    JwtRejected,
    scopes_from,
    verify_with_keys,
)
from extauthz.core.policy import JwtSettings
from extauthz.errors import JwksError
from tests.support.idp import AUDIENCE, SigningKey, claims, hs256_with, unsigned

ISSUER = "https://idp.example.com/realms/deploy"
RSA = SigningKey("rsa-1")
EC = SigningKey("ec-1", "EC")
OTHER = SigningKey("rsa-1")  # same kid, different key: a forgery
KEYS = parse_jwks(json.dumps({"keys": [RSA.jwk(), EC.jwk()]}))
SETTINGS = JwtSettings(ISSUER, audiences=("other", AUDIENCE), leeway_seconds=30)


def verify(token: str, settings: JwtSettings = SETTINGS, now: float | None = None) -> object:
    return verify_with_keys(token, settings, KEYS, time.time() if now is None else now)


def test_valid_rsa_and_ec() -> None:
    for key in (RSA, EC):
        result = verify(key.sign(claims(ISSUER)))
        assert isinstance(result, JwtIdentity)
        assert result.subject == "user-1"
        assert result.scopes == {"openid", "predict"}


@pytest.mark.parametrize(
    ("token_claims", "reason"),
    [
        ({"exp": -31}, "token expired"),  # time claims: seconds from now
        ({"nbf": 60}, "token not yet valid"),
        ({"iat": 60}, "token issued in the future"),
        ({"iss": "https://evil.example.com"}, "invalid issuer"),
        ({"aud": "someone-else"}, "invalid audience"),
        ({"aud": None}, "missing claim aud"),
        ({"exp": None}, "missing claim exp"),
        ({"exp": "tomorrow"}, "malformed time claim"),
        ({"sub": None}, "missing or invalid subject"),
        ({"sub": "bad\nsubject"}, "missing or invalid subject"),
    ],
)
def test_rejections(token_claims: dict[str, object], reason: str) -> None:
    now = int(time.time())
    relative = {
        k: now + v if k in ("exp", "nbf", "iat") and isinstance(v, int) else v
        for k, v in token_claims.items()
    }
    assert verify(RSA.sign(claims(ISSUER, **relative)), now=now) == JwtRejected(reason)


def test_leeway() -> None:
    token = RSA.sign(claims(ISSUER, exp=1_000_000, iat=None))
    assert isinstance(verify(token, now=1_000_029), JwtIdentity)
    assert verify(token, now=1_000_030) == JwtRejected("token expired")


def test_forged_and_downgraded_tokens() -> None:
    assert verify(OTHER.sign(claims(ISSUER))) == JwtRejected("invalid signature")
    payload = claims(ISSUER)
    assert verify(unsigned({"alg": "none", "kid": "rsa-1"}, payload)) == JwtRejected(
        "algorithm not allowed"
    )
    hs = hs256_with(RSA.public_pem(), {"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}, payload)
    assert verify(hs) == JwtRejected("algorithm not allowed")
    # RS256 header naming the EC key: no key of the right type
    assert verify(RSA.sign(payload, {"kid": "ec-1"})) == UNKNOWN_KEY
    assert verify(SigningKey("new-kid").sign(payload)) == UNKNOWN_KEY
    only_rsa = JwtSettings(ISSUER, audiences=(AUDIENCE,), algorithms=("RS256",))
    assert verify(EC.sign(payload), only_rsa) == JwtRejected("algorithm not allowed")
    no_audience = JwtSettings(ISSUER)  # the policy requires audiences; in code: fail closed
    assert verify(RSA.sign(payload), no_audience) == JwtRejected("invalid audience")


@pytest.mark.parametrize(
    "garbage",
    [
        "eyJ.eyJ.x",
        "eyJhbGciOiJSUzI1NiJ9.bm90anNvbg.c2ln",
        "eyJhbGciOiJSUzI1NiJ9..",
        "eyJ!!!.a.b",
        "eyJ" + "A" * 5000 + ".a.b",
    ],
)
def test_garbage_three_part_strings(garbage: str) -> None:
    result = verify(garbage)
    assert isinstance(result, JwtRejected)
    assert garbage not in result.reason


def test_keyless_jwks_and_claim_mapping() -> None:
    jwk = RSA.jwk()
    del jwk["kid"]
    keys = parse_jwks(
        json.dumps({"keys": [jwk, {"kty": "oct", "k": "c2VjcmV0"}, {"kty": "RSA", "use": "enc"}]})
    )
    settings = JwtSettings(
        ISSUER,
        audiences=("account",),
        scopes_claim="realm_access.roles",
        subject_claim="preferred_username",
        forward_claims=(("email", "x-extauthz-email"), ("groups", "x-extauthz-groups")),
    )
    token = RSA.sign(
        claims(
            ISSUER,
            aud=["account", "x"],
            preferred_username="alice",
            email="a@example.com",
            groups=["ml", "ops"],
            realm_access={"roles": ["predict", "bad,role", 7]},
        ),
        {"kid": None},
    )
    result = verify_with_keys(token, settings, keys, time.time())
    assert isinstance(result, JwtIdentity)
    assert result.subject == "alice"
    assert result.scopes == {"predict"}
    assert result.headers == (
        ("x-extauthz-email", "a@example.com"),
        ("x-extauthz-groups", "ml,ops"),
    )


def test_scopes_from_claim_shapes() -> None:
    assert scopes_from("a b  c") == {"a", "b", "c"}
    assert scopes_from(["a", "b"]) == {"a", "b"}
    assert scopes_from(None) == frozenset()
    assert scopes_from({"a": 1}) == frozenset()


@pytest.mark.parametrize(
    "document", ["nope", "{}", '{"keys": []}', '{"keys": [{"kty": "oct", "k": "x"}]}']
)
def test_bad_jwks(document: str) -> None:
    with pytest.raises(JwksError):
        parse_jwks(document)


@pytest.mark.parametrize("other_alg", ["PS256", "RS384", "RS512", "PS512"])
def test_a_jwk_that_names_its_algorithm_verifies_only_that_algorithm(other_alg: str) -> None:
    # same RSA key, another RSA algorithm: valid signature, but the JWK says RS256 only
    keys = parse_jwks(json.dumps({"keys": [RSA.jwk()]}))
    token = jwt.encode(claims(ISSUER), RSA.private, algorithm=other_alg, headers={"kid": "rsa-1"})
    assert verify_with_keys(token, SETTINGS, keys, time.time()) == UNKNOWN_KEY
    unnamed = {k: v for k, v in RSA.jwk().items() if k != "alg"}  # no alg: any RSA algorithm
    keys = parse_jwks(json.dumps({"keys": [unnamed]}))
    assert isinstance(verify_with_keys(token, SETTINGS, keys, time.time()), JwtIdentity)
    named = parse_jwks(json.dumps({"keys": [RSA.jwk()]}))
    assert isinstance(
        verify_with_keys(RSA.sign(claims(ISSUER)), SETTINGS, named, time.time()), JwtIdentity
    )


def test_a_jwk_with_a_malformed_alg_is_skipped() -> None:
    for alg in (1, ["RS256"], {"a": 1}):
        with pytest.raises(JwksError):
            parse_jwks(json.dumps({"keys": [{**RSA.jwk(), "alg": alg}]}))


@pytest.mark.parametrize(
    ("value", "models"),
    [
        (["demo-small", "qwen2-*"], {"demo-small", "qwen2-*"}),
        ("demo-small demo-large", {"demo-small", "demo-large"}),
        (["ok", "*", "bad name", 5, "x" * 300, None], {"ok"}),  # bad items dropped
        (None, set()),  # no claim: no model
        ({"not": "a list"}, set()),
    ],
)
def test_models_from_a_claim(value: object, models: set[str]) -> None:
    """`models_claim` (LLM routes): the models a JWT may use; without the setting, any."""
    extra = {} if value is None else {"llm_models": value}
    token = RSA.sign(claims(ISSUER, **extra))
    settings = JwtSettings(ISSUER, audiences=(AUDIENCE,), models_claim="llm_models")
    result = verify(token, settings)
    assert isinstance(result, JwtIdentity) and result.models == frozenset(models)
    plain = verify(token)
    assert isinstance(plain, JwtIdentity) and plain.models is None
