from __future__ import annotations

import base64
import re
import secrets
import zlib
from pathlib import Path
from typing import Any

import pytest

from extauthz.core.credentials import (
    BASE62,
    CHECKSUMMED_TOKEN,
    BasicCredential,
    BearerCredential,
    MalformedCredential,
    NoCredential,
    UnsupportedScheme,
    checksum_fails,
    looks_like_jwt,
    new_token,
    parse_authorization,
    token_checksum,
    token_hash,
)
from extauthz.core.token_record import TokenRecord
from extauthz.errors import MalformedRecord
from tests.support.readme import readme_block


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


def test_new_tokens_are_long_random_prefixed_and_checksummed() -> None:
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100
    for t in tokens:
        assert CHECKSUMMED_TOKEN.fullmatch(t)  # eat_ + 32 random + 6 checksum, base62
        assert t[-6:] == token_checksum(t[4:36])
        assert not checksum_fails(t)
        assert isinstance(parse_authorization("Bearer " + t), BearerCredential)
        assert not looks_like_jwt(t)
    # every base62 character turns up in the random part (uniform choice, not just hex)
    assert set("".join(t[4:36] for t in tokens)) == set(BASE62)


def _reference_checksum(body: str) -> str:
    """The documented recipe, spelled out (docs/tokens.md#secret-format)."""
    n, out = zlib.crc32(body.encode("ascii")), ""
    for _ in range(6):
        n, digit = divmod(n, 62)
        out = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"[digit] + out
    return out


def test_checksum_is_crc32_of_the_random_part_in_base62() -> None:
    assert token_checksum("0" * 32) == _reference_checksum("0" * 32)
    assert token_checksum("z" * 32) == _reference_checksum("z" * 32)
    for _ in range(2000):
        t = new_token()
        assert t[-6:] == _reference_checksum(t[4:36])
    # the largest CRC32 still fits in 6 characters
    assert len(_reference_checksum("x")) == 6 and 62**6 > 2**32 - 1


def _flip(text: str, i: int) -> str:
    return text[:i] + ("A" if text[i] != "A" else "B") + text[i + 1 :]


def test_a_changed_character_fails_the_checksum() -> None:
    t = new_token()
    for i in range(4, len(t)):  # a typo anywhere in the random part or the checksum
        assert checksum_fails(_flip(t, i)), i


@pytest.mark.parametrize(
    "secret",
    [
        "eat_MVT28sxldU7_f8sUufXpf_e8o819JRmgKgcbDKR8-dI",  # the older form: 43 URL-safe base64
        "eat_" + "A" * 43,
        "eat_" + "A" * 37,  # one short
        "eat_" + "A" * 39,  # one long
        "eat_" + "A" * 37 + "-",  # not base62: not the checksummed form
        "eat_" + "A" * 37 + "\u0661",  # a non-ASCII digit
        "EAT_" + "A" * 38,  # the prefix is case-sensitive
        "xyz_" + "A" * 38,
        "paperspace-route-secret-1234",
        "",
    ],
)
def test_other_secrets_are_never_judged_by_the_checksum(secret: str) -> None:
    assert not checksum_fails(secret)


def test_old_form_secrets_never_have_the_new_length() -> None:
    # token_urlsafe(32) is always 43 characters: an old secret is 47, a new one 42
    assert {len("eat_" + secrets.token_urlsafe(32)) for _ in range(200)} == {47}
    assert len(new_token()) == 42


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


def test_the_documented_check_agrees_with_ours() -> None:
    namespace: dict[str, Any] = {}
    exec(readme_block("secret-checksum", "python"), namespace)  # noqa: S102 (our own docs)
    is_key = namespace["is_extauthz_key"]
    for _ in range(500):
        t = new_token()
        assert is_key(t) and not checksum_fails(t)
        assert not is_key(_flip(t, 10)) and checksum_fails(_flip(t, 10))
    assert not is_key("eat_" + secrets.token_urlsafe(32))
    # the example secret on that page is a valid one
    page = (Path(__file__).resolve().parents[2] / "docs/tokens.md").read_text()
    examples = re.findall(r"^eat_[0-9A-Za-z]{38}$", page, re.M)
    assert examples and all(is_key(e) for e in examples)
