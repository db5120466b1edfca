"""GitHub secret scanning reports, pure: the signing keys GitHub publishes, the signature
over a report, the report itself and the feedback answered (docs/security.md#when-a-key-leaks).

GitHub POSTs a JSON array of matches `[{"token", "type", "url", "source"}]`, signed with
ECDSA P-256 over SHA-256 of the raw body: `Github-Public-Key-Identifier` names the key
(`key_identifier` in GitHub's published `{"public_keys": [{"key_identifier", "key" (PEM),
"is_current"}]}`), `Github-Public-Key-Signature` is the base64 of the DER signature. Every key
listed verifies, current or not (GitHub keeps signing with a key while it rotates). The
answer is the feedback array `[{"token_hash", "token_type", "label"}]`, `token_hash` the
SHA-256 hex of the raw token, `label` `true_positive` (ours) or `false_positive`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from extauthz.errors import BadLeakReport, BadSignature, ConfigError

KEY_ID_HEADER = "github-public-key-identifier"
SIGNATURE_HEADER = "github-public-key-signature"

MAX_KEYS_FILE_BYTES = 1 << 20
MAX_KEYS = 64
MAX_KEY_ID = 256  # characters (GitHub's are 64 hex digits)
MAX_SIGNATURE = 256  # base64 characters (a DER P-256 signature is at most 72 bytes: 96)
MAX_MATCHES = 1000  # matches in one report; more is refused whole (400)
# characters of each field of a match; a longer one is refused (400), never truncated
MAX_FIELD = {"token": 1024, "type": 256, "url": 4096, "source": 256}
TRUE_POSITIVE, FALSE_POSITIVE = "true_positive", "false_positive"


@dataclass(frozen=True)
class SigningKeys:
    """GitHub's secret scanning public keys, by key identifier."""

    by_id: Mapping[str, ec.EllipticCurvePublicKey]
    current: frozenset[str]  # the ids GitHub marks is_current (informative: all verify)

    def __len__(self) -> int:
        return len(self.by_id)


def parse_keys(data: bytes, source: str) -> SigningKeys:
    """GitHub's published key document (`{"public_keys": [...]}`) → SigningKeys; ConfigError
    naming `source` and the entry at fault."""

    def bad(where: str, why: str) -> ConfigError:
        return ConfigError(f"{source}: {where}: {why} (expected GitHub's secret scanning keys)")

    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        raise bad("the file", "not JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("public_keys"), list):
        raise bad("the file", 'not a JSON object with a "public_keys" list')
    entries = document["public_keys"]
    if not entries:
        raise bad("public_keys", "empty: no key would verify a report")
    if len(entries) > MAX_KEYS:
        raise bad("public_keys", f"more than {MAX_KEYS} keys")
    by_id: dict[str, ec.EllipticCurvePublicKey] = {}
    current = set()
    for i, entry in enumerate(entries):
        where = f"public_keys[{i}]"
        if not isinstance(entry, dict):
            raise bad(where, "not an object")
        key_id, pem = entry.get("key_identifier"), entry.get("key")
        if not isinstance(key_id, str) or not 0 < len(key_id) <= MAX_KEY_ID:
            raise bad(f"{where}.key_identifier", f"not a string of 1 to {MAX_KEY_ID} characters")
        if not key_id.isascii() or not key_id.isprintable():
            raise bad(f"{where}.key_identifier", "not printable ASCII")
        if key_id in by_id:
            raise bad(f"{where}.key_identifier", f"{key_id!r} is listed twice")
        if not isinstance(pem, str):
            raise bad(f"{where}.key", "not a string (a PEM public key)")
        try:
            by_id[key_id] = _public_key(pem)
        except ValueError as e:
            raise bad(f"{where}.key", str(e)) from None
        is_current = entry.get("is_current", False)
        if not isinstance(is_current, bool):
            raise bad(f"{where}.is_current", "not true or false")
        if is_current:
            current.add(key_id)
    return SigningKeys(by_id, frozenset(current))


def _public_key(pem: str) -> ec.EllipticCurvePublicKey:
    """A PEM public key that must be ECDSA P-256; ValueError saying why not."""
    try:
        key = load_pem_public_key(pem.encode("utf-8", "surrogatepass"))
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError("not a PEM public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("not an ECDSA P-256 key (GitHub signs with ECDSA-NIST-P256V1-SHA256)")
    return key


def verify(keys: SigningKeys, key_id: str | None, signature: str | None, body: bytes) -> str:
    """Check the signature headers of a report over its raw `body`; the key id that verified
    it, else BadSignature saying why (never which part of a signature was wrong)."""
    if not key_id or not signature:
        raise BadSignature("no Github-Public-Key-Identifier and Github-Public-Key-Signature")
    if len(key_id) > MAX_KEY_ID or len(signature) > MAX_SIGNATURE:
        raise BadSignature("signature headers longer than any GitHub sends")
    key = keys.by_id.get(key_id)
    if key is None:
        raise BadSignature(
            "unknown Github-Public-Key-Identifier: refresh --secret-scanning-keys if GitHub "
            "rotated its keys"
        )
    try:
        der = base64.b64decode(signature.strip(), validate=True)
        key.verify(der, body, ec.ECDSA(hashes.SHA256()))
    except (binascii.Error, ValueError, InvalidSignature):
        raise BadSignature("the signature does not verify") from None
    return key_id


@dataclass(frozen=True, slots=True)
class Match:
    """One secret GitHub found: the token as found, its type, where (url, source)."""

    token: str
    type: str
    url: str
    source: str

    @property
    def digest(self) -> str:
        """SHA-256 hex of the raw token's bytes (UTF-8; a lone surrogate, which no token of
        ours has, as its code unit): its key in Redis and the feedback's token_hash."""
        return hashlib.sha256(self.token.encode("utf-8", "surrogatepass")).hexdigest()


def parse_report(body: bytes) -> list[Match]:
    """A report's JSON body → its matches; BadLeakReport naming what is wrong. Keys other
    than the four are ignored (GitHub may add some); `type`, `url`, `source` may be absent
    or null (empty)."""
    try:
        document = json.loads(body)
    except RecursionError:
        raise BadLeakReport("the body is nested too deeply to be a report") from None
    except ValueError as e:  # (not JSON, not UTF-8, an absurd number)
        raise BadLeakReport(f"the body is not JSON: {str(e)[:120]}") from None
    if not isinstance(document, list):
        raise BadLeakReport("the body is not a JSON array of matches")
    if len(document) > MAX_MATCHES:
        raise BadLeakReport(
            f"{len(document)} matches in one report: at most {MAX_MATCHES}; send them in parts"
        )
    matches = []
    for i, item in enumerate(document):
        if not isinstance(item, dict):
            raise BadLeakReport(f"[{i}]: not an object")
        values: dict[str, str] = {}
        for name, limit in MAX_FIELD.items():
            value = item.get(name)
            if value is None and name != "token":
                value = ""
            if not isinstance(value, str):
                need = "a string" if name == "token" else "a string or null"
                raise BadLeakReport(f"[{i}].{name}: {'missing' if value is None else need}")
            if len(value) > limit:
                raise BadLeakReport(f"[{i}].{name}: longer than {limit} characters")
            values[name] = value
        matches.append(Match(**values))
    return matches


def feedback(matches: Sequence[Match], ours: frozenset[str]) -> list[dict[str, str]]:
    """The answer GitHub reads: per match, its token's hash, its type, and whether it is one
    of ours (`ours`: the hashes found)."""
    return [
        {
            "token_hash": m.digest,
            "token_type": m.type,
            "label": TRUE_POSITIVE if m.digest in ours else FALSE_POSITIVE,
        }
        for m in matches
    ]
