from __future__ import annotations

import base64

import pytest

from extauthz.core.credentials import (
    BasicCredential,
    BearerCredential,
    MalformedCredential,
    NoCredential,
    UnsupportedScheme,
    looks_like_jwt,
    new_token,
    parse_authorization,
    token_hash,
)
from extauthz.core.token_record import TokenRecord
from extauthz.errors import MalformedRecord


def b64(text: bytes) -> str:
    return base64.b64encode(text).decode()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, NoCredential()),
        ("Bearer abc", BearerCredential("abc")),
        ("bEaReR abc.def-_~+/==", BearerCredential("abc.def-_~+/==")),
        ("Basic " + b64(b"user:pa:ss"), BasicCredential("user", "pa:ss")),
        ("Basic " + b64("ü:pässwörd".encode()), BasicCredential("ü", "pässwörd")),
        ("Digest x=y", UnsupportedScheme("digest")),
    ],
)
def test_parses(value: str | None, expected: object) -> None:
    assert parse_authorization(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "Bearer",
        "Bearer    ",
        "abc",
        "Bearer a b",
        "Bearer a,Bearer b",
        "Bearer a, Bearer b",
        "Bearer ä",
        "Bearer " + "x" * 70000,
        "Basic ***",
        "Basic " + b64(b"nocolon"),
        "Basic " + b64(b"user:"),
        "Basic " + b64(b"\xff:x"),
        "Basic " + b64(b"u:p") + ", Basic " + b64(b"u:p"),
    ],
)
def test_malformed(value: str) -> None:
    result = parse_authorization(value)
    assert isinstance(result, MalformedCredential)
    assert "x" * 20 not in result.reason


def test_new_tokens_are_long_random_and_prefixed() -> None:
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100
    for t in tokens:
        assert t.startswith("eat_")
        assert len(t) >= 4 + 43  # 32 bytes in URL-safe base64
        assert isinstance(parse_authorization("Bearer " + t), BearerCredential)
        assert not looks_like_jwt(t)


def test_token_hash_matches_sha256sum() -> None:
    # printf %s abc | sha256sum
    assert token_hash("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_record_round_trip_and_hand_written_fields() -> None:
    record = TokenRecord(
        "t1", frozenset({"a", "b"}), frozenset({"inference"}), 2000000000, "ci", 1700000000
    )
    assert TokenRecord.from_fields(record.to_fields()) == record
    by_hand = TokenRecord.from_fields({"id": "t1", "routes": "a b,c", "scopes": "inference"})
    assert by_hand.routes == {"a", "b", "c"}
    assert by_hand.expires_at is None


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"routes": "a"},
        {"id": "t1"},
        {"id": "t1", "routes": "a", "expires_at": "tomorrow"},
        {"id": "t1", "routes": "a", "expires_at": "inf"},
    ],
)
def test_malformed_records(fields: dict[str, str]) -> None:
    with pytest.raises(MalformedRecord):
        TokenRecord.from_fields(fields)
