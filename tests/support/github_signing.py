"""GitHub's side of secret scanning, for tests: its published key document and its
signature over a report (ECDSA P-256, SHA-256 of the raw body, DER, base64)."""

from __future__ import annotations

import base64
import json
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec


def public_pem(key: Any) -> str:
    """The PEM public key of a private key (any kind)."""
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return str(pem.decode())


def keys_document(*entries: tuple[str, Any, bool]) -> bytes:
    """GitHub's published shape: {"public_keys": [{key_identifier, key, is_current}]}."""
    return json.dumps(
        {
            "public_keys": [
                {"key_identifier": kid, "key": public_pem(key), "is_current": current}
                for kid, key, current in entries
            ]
        }
    ).encode()


def sign(key: ec.EllipticCurvePrivateKey, body: bytes) -> str:
    """As GitHub signs a report: ECDSA P-256, SHA-256 of the raw body, DER, base64."""
    return base64.b64encode(key.sign(body, ec.ECDSA(hashes.SHA256()))).decode()
