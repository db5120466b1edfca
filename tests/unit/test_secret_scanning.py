"""GitHub secret scanning, without a network: signatures made here exactly as GitHub makes
them (ECDSA P-256 over SHA-256 of the raw body, DER, base64), the key document GitHub
publishes and its bad shapes, the report and its bad shapes, and what a report does to the
store (fakeredis; the real thing: tests/integration/test_secret_scanning.py)."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from extauthz.admin import leaks, tokens
from extauthz.admin.sync import sync
from extauthz.core.policy import parse_policy
from extauthz.core.secret_scanning import (
    MAX_MATCHES,
    Match,
    SigningKeys,
    feedback,
    parse_keys,
    parse_report,
    verify,
)
from extauthz.errors import BadLeakReport, BadSignature, ConfigError, PolicyError
from extauthz.storage.store import Store
from tests.support.github_signing import keys_document, public_pem, sign

OLD = ec.generate_private_key(ec.SECP256R1())
NEW = ec.generate_private_key(ec.SECP256R1())
OTHER = ec.generate_private_key(ec.SECP256R1())
KEYS = parse_keys(keys_document(("old-id", OLD, False), ("new-id", NEW, True)), "keys.json")
BODY = b'[{"source":"commit","token":"eat_x","type":"extauthz_token","url":"https://github.com/o/r/blob/1/f"}]'


def test_a_signature_made_as_github_makes_it_verifies_with_every_listed_key() -> None:
    assert KEYS.current == {"new-id"} and len(KEYS) == 2
    assert verify(KEYS, "new-id", sign(NEW, BODY), BODY) == "new-id"
    assert verify(KEYS, "old-id", sign(OLD, BODY), BODY) == "old-id"  # not current: still ours


_BAD_SIGNATURES = [
    ("new-id", sign(NEW, BODY), BODY + b" ", "does not verify"),  # tampered body
    ("new-id", sign(NEW, BODY), BODY.replace(b"eat_x", b"eat_y"), "does not verify"),
    ("old-id", sign(NEW, BODY), BODY, "does not verify"),  # another listed key's id
    ("new-id", sign(OTHER, BODY), BODY, "does not verify"),  # a key GitHub never listed
    ("nobody", sign(NEW, BODY), BODY, "unknown Github-Public-Key-Identifier"),
    ("new-id", None, BODY, "no Github-Public-Key"),
    (None, sign(NEW, BODY), BODY, "no Github-Public-Key"),
    ("", "", BODY, "no Github-Public-Key"),
    ("new-id", "not base64!", BODY, "does not verify"),
    ("new-id", sign(NEW, BODY)[:-4], BODY, "does not verify"),  # cut
    ("new-id", base64.b64encode(b"\x30\x02\x01").decode(), BODY, "does not verify"),  # bad DER
    ("new-id", base64.b64encode(b"x" * 64).decode(), BODY, "does not verify"),  # raw r||s
    ("new-id", "A" * 10_000, BODY, "longer than"),
    ("x" * 10_000, sign(NEW, BODY), BODY, "longer than"),
    ("new-id\x00", sign(NEW, BODY), BODY, "unknown"),
]


@pytest.mark.parametrize(
    ("key_id", "signature", "body", "why"),
    _BAD_SIGNATURES,
    ids=[f"{i}-{case[3]}" for i, case in enumerate(_BAD_SIGNATURES)],  # (signatures: random)
)
def test_what_is_not_githubs_signature_is_refused(
    key_id: str | None, signature: str | None, body: bytes, why: str
) -> None:
    with pytest.raises(BadSignature, match=why):
        verify(KEYS, key_id, signature, body)


_BAD_KEY_FILES = [
    (b"", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b"[" * 100_000, "not JSON"),
    (b"[]", '"public_keys" list'),
    (b'{"public_keys": {}}', '"public_keys" list'),
    (b'{"public_keys": []}', "empty"),
    (b'{"public_keys": [1]}', "public_keys[0]: not an object"),
    (b'{"public_keys": [{"key": "x"}]}', "public_keys[0].key_identifier"),
    (b'{"public_keys": [{"key_identifier": "a\\u001b", "key": "x"}]}', "printable"),
    (b'{"public_keys": [{"key_identifier": "a", "key": 7}]}', "public_keys[0].key: not a"),
    (b'{"public_keys": [{"key_identifier": "a", "key": "PEM?"}]}', "not a PEM public key"),
    (keys_document(("a", rsa.generate_private_key(65537, 2048), True)), "not an ECDSA P-256"),
    (keys_document(("a", ec.generate_private_key(ec.SECP384R1()), True)), "not an ECDSA P-256"),
    (keys_document(("a", ed25519.Ed25519PrivateKey.generate(), True)), "not an ECDSA P-256"),
    (keys_document(("a", NEW, True), ("a", OLD, False)), "listed twice"),
    (
        json.dumps(
            {"public_keys": [{"key_identifier": "a", "key": public_pem(NEW), "is_current": "yes"}]}
        ).encode(),
        "is_current",
    ),
    (keys_document(*[(str(i), NEW, True) for i in range(65)]), "more than 64"),
]


@pytest.mark.parametrize(
    ("document", "fragment"),
    _BAD_KEY_FILES,
    ids=[f"{i}-{case[1]}" for i, case in enumerate(_BAD_KEY_FILES)],  # (keys: random)
)
def test_a_keys_file_not_of_githubs_shape_is_one_line_naming_the_entry(
    document: bytes, fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_keys(document, "keys.json")
    message = str(info.value)
    assert message.startswith("keys.json: ") and fragment in message, message
    assert "\n" not in message


def test_the_keys_file_is_read_again_when_it_changes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys.json"
    path.write_bytes(keys_document(("old-id", OLD, True)))
    keys = leaks.KeysFile(str(path))
    assert set(keys.keys().by_id) == {"old-id"}
    path.write_bytes(keys_document(("old-id", OLD, False), ("new-id", NEW, True)))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))  # (whatever the clock's grain)
    assert set(keys.keys().by_id) == {"old-id", "new-id"}
    # a broken refresh: logged once, the keys read before stay
    path.write_text("<html>rate limited</html>")
    with caplog.at_level(logging.ERROR, "extauthz.leaks"):
        assert set(keys.keys().by_id) == {"old-id", "new-id"}
        assert set(keys.keys().by_id) == {"old-id", "new-id"}
    assert len(caplog.records) == 1 and "not JSON" in caplog.records[0].getMessage()
    path.unlink()
    assert set(keys.keys().by_id) == {"old-id", "new-id"}
    # at start-up, a file that cannot be used is one line
    for bad, fragment in ((tmp_path / "missing.json", "cannot read it"), (tmp_path, "not a reg")):
        with pytest.raises(ConfigError, match=fragment):
            leaks.KeysFile(str(bad))


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"", "not JSON"),
        (b"\xff\xfe\x00", "not JSON"),
        (b"[{]", "not JSON"),
        (b"[" * 100_000, "nested too deeply"),
        (b"9" * 5000, "not JSON"),  # (an absurd integer)
        (b'{"token": "eat_x"}', "not a JSON array"),
        (b'"eat_x"', "not a JSON array"),
        (b"[1]", "[0]: not an object"),
        (b'[{"type": "t"}]', "[0].token: missing"),
        (b'[{"token": null}]', "[0].token: missing"),
        (b'[{"token": 12}]', "[0].token: a string"),
        (b'[{"token": ["eat_x"]}]', "[0].token: a string"),
        (b'[{"token": "a"}, {"token": "b", "url": 3}]', "[1].url: a string or null"),
        (json.dumps([{"token": "x" * 1025}]).encode(), "[0].token: longer than 1024"),
        (json.dumps([{"token": "x", "url": "u" * 4097}]).encode(), "[0].url: longer than"),
        (json.dumps([{"token": "x"}] * (MAX_MATCHES + 1)).encode(), "at most 1000"),
    ],
)
def test_a_signed_body_that_is_not_a_report_is_refused_naming_the_entry(
    body: bytes, fragment: str
) -> None:
    with pytest.raises(BadLeakReport) as info:
        parse_report(body)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_a_report_reads_githubs_fields_and_ignores_others() -> None:
    body = json.dumps(
        [
            {"token": "eat_a", "type": "t", "url": "https://github.com/x", "source": "content"},
            {"token": "eat_b", "type": "t", "url": None, "extra": {"future": 1}},
            {"token": "\ud800 lone", "type": "t"},
        ]
    ).encode()
    a, b, lone = parse_report(body)
    assert a == Match("eat_a", "t", "https://github.com/x", "content")
    assert (b.url, b.source) == ("", "")
    assert a.digest == hashlib.sha256(b"eat_a").hexdigest()  # what GitHub expects
    assert len(lone.digest) == 64  # (hashable, never ours, never a crash)
    assert feedback([a, b], frozenset({a.digest})) == [
        {"token_hash": a.digest, "token_type": "t", "label": "true_positive"},
        {"token_hash": b.digest, "token_type": "t", "label": "false_positive"},
    ]
    assert parse_report(b"[]") == []


# --- what a report does to the store --------------------------------------------------------


def _events(store: Store) -> list[dict[str, Any]]:
    from extauthz.admin import audit

    return [e for e in audit.tail(store, 100) if e["action"] == "token.leaked"]


def test_a_leaked_token_is_revoked_audited_and_labelled(store: Store) -> None:
    live = tokens.create(store, ["*"], token_id="live", now=time.time())
    other = tokens.create(store, ["*"], token_id="other", now=time.time())
    leaked = Match(live.token, "extauthz_token", "https://github.com/o/r/blob/1/f", "commit")
    stranger = Match("eat_" + "z" * 43, "extauthz_token", "", "content")
    handled = leaks.report(store, [leaked, stranger, leaked], actor=leaks.GITHUB_ACTOR)
    assert [f["label"] for f in handled.feedback] == [
        "true_positive", "false_positive", "true_positive",  # (a repeat: labelled the same)
    ]  # fmt: skip
    assert handled.found == {leaked.digest: "live"} and handled.revoked == 1
    assert store.token_record(leaked.digest) is None
    assert store.token_record(hashlib.sha256(other.token.encode()).hexdigest()) is not None
    (event,) = _events(store)
    assert (event["actor"], event["target"]) == ("github:secret-scanning", "live")
    assert event["detail"] == {
        "url": "https://github.com/o/r/blob/1/f",
        "source": "commit",
        "type": "extauthz_token",
        "on_leak": "revoke",
        "secrets": 1,
    }
    assert live.token not in json.dumps(_events(store))  # never the secret


def test_a_secret_in_rotation_grace_takes_its_token_with_it(store: Store) -> None:
    old = tokens.create(store, ["*"], token_id="graced", ttl_seconds=3600, now=time.time())
    new = tokens.rotate(store, "graced", grace_seconds=600, now=time.time())
    handled = leaks.report(store, [Match(old.token, "t", "", "")], actor=None)
    assert handled.found == {hashlib.sha256(old.token.encode()).hexdigest(): "graced"}
    assert handled.revoked == 2  # the leaked secret and the new one: the token is gone
    assert store.token_record(hashlib.sha256(new.token.encode()).hexdigest()) is None


def test_keys_made_by_hand_or_edited_are_still_ours_and_deleted(store: Store) -> None:
    hand = hashlib.sha256(b"made-by-hand").hexdigest()
    store.client.hset(f"extauthz:token:{hand}", mapping={"id": "hand", "routes": "*"})
    broken = hashlib.sha256(b"broken-key").hexdigest()
    store.client.set(f"extauthz:token:{broken}", "not a hash")
    handled = leaks.report(
        store, [Match("made-by-hand", "t", "", ""), Match("broken-key", "t", "", "")], actor=None
    )
    assert handled.found == {hand: "hand", broken: ""}
    assert [f["label"] for f in handled.feedback] == ["true_positive"] * 2
    assert not store.client.exists(f"extauthz:token:{hand}", f"extauthz:token:{broken}")


POLICY = """
version: 1
on_leak: notify
routes:
  a: {access: protected, credentials: [basic], basic_username: u}
secrets:
  - {id: route-pw, routes: [a], from_env: PW}
"""


def test_on_leak_notify_keeps_the_token_and_audits_it(store: Store) -> None:
    sync(store, parse_policy(POLICY, "p.yaml"), env={"PW": "route-password"})
    live = tokens.create(store, ["*"], token_id="kept", now=time.time())
    handled = leaks.report(
        store,
        [Match(live.token, "t", "https://github.com/x", "commit"), Match("route-password", "t", "", "")],
        actor=None,
    )  # fmt: skip
    assert handled.on_leak == "notify" and handled.revoked == 0
    assert [f["label"] for f in handled.feedback] == ["true_positive", "true_positive"]
    assert store.token_record(hashlib.sha256(live.token.encode()).hexdigest()) is not None
    assert [(e["target"], e["detail"]["on_leak"]) for e in _events(store)] == [
        ("kept", "notify"),
        ("route-pw", "route_secret"),  # (in the policy file: reported, never changed here)
    ]


def test_on_leak_in_the_policy_file() -> None:
    assert parse_policy("version: 1\nroutes: {}\n").on_leak == "revoke"
    assert parse_policy("version: 1\non_leak: notify\nroutes: {}\n").on_leak == "notify"
    for text, line, fragment in (
        ("version: 1\non_leak: delete\nroutes: {}\n", 2, "'delete' is not revoke or notify"),
        ("version: 1\non_leak: [revoke]\nroutes: {}\n", 2, "must be a string"),
        ("version: 1\non_leak: ''\nroutes: {}\n", 2, "must not be empty"),
    ):
        with pytest.raises(PolicyError) as info:
            parse_policy(text, "p.yaml")
        assert (info.value.line, info.value.key) == (line, "on_leak")
        assert fragment in info.value.message


def test_nothing_ours_is_nothing_done(store: Store) -> None:
    tokens.create(store, ["*"], token_id="safe", now=time.time())
    handled = leaks.report(
        store, [Match("", "t", "", ""), Match("eat_nope", "t", "", "")], actor=None
    )
    assert handled.found == {} and handled.revoked == 0 and not _events(store)
    assert isinstance(KEYS, SigningKeys)


@pytest.mark.parametrize(
    "pasted",
    ["{s} ", "\t{s}\n", "Bearer {s}", "bearer  {s}", '"{s}"', "'{s}'", "`{s}`",
     "Authorization: Bearer {s} (from the log)", "token={s}&x=1"],
)  # fmt: skip
def test_a_pasted_secret_is_found_in_what_surrounds_it(pasted: str) -> None:
    from extauthz.cli import _pasted_secret

    secret = "eat_" + "Ab1" * 12 + "Cd"
    assert _pasted_secret(pasted.format(s=secret)) == secret
    assert _pasted_secret("route secret " + secret + " and eat_" + "x" * 38) != secret  # (two)
    assert _pasted_secret("a-route-secret") == "a-route-secret"
