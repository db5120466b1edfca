"""A throwaway certificate authority for the local stack: mutual TLS between Envoy and extauthz.

Made fresh by `extauthz up` in its state directory (and by the tests): one CA signs the
server certificate of extauthz (DNS name `extauthz`, IP 127.0.0.1) and the client
certificate Envoy presents. For production, use your own CA (or your mesh's); see the
docs/security.md.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_NAME = "extauthz"  # the name Envoy checks in extauthz's certificate (SNI and SAN)


@dataclass(frozen=True)
class LocalPki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path  # Envoy's
    client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def make_local_pki(directory: Path, days: int = 30, ca_name: str = "extauthz local CA") -> LocalPki:
    """A new CA, a server certificate for extauthz and a client certificate for Envoy."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())

    def issue(
        subject: x509.Name,
        key: ec.EllipticCurvePrivateKey,
        extensions: list[tuple[x509.ExtensionType, bool]],
    ) -> bytes:
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(_name(ca_name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
        )
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    pki = LocalPki(
        ca=directory / "ca.crt",
        server_cert=directory / "extauthz.crt",
        server_key=directory / "extauthz.key",
        client_cert=directory / "envoy.crt",
        client_key=directory / "envoy.key",
    )
    pki.ca.write_bytes(issue(_name(ca_name), ca_key, [(x509.BasicConstraints(True, 0), True)]))
    server_key = ec.generate_private_key(ec.SECP256R1())
    names = x509.SubjectAlternativeName(
        [x509.DNSName(SERVER_NAME), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    # no extended key usage: `extauthz health` in the same container presents it as a client
    pki.server_cert.write_bytes(issue(_name(SERVER_NAME), server_key, [(names, False)]))
    _write_key(pki.server_key, server_key)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_usage = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
    pki.client_cert.write_bytes(issue(_name("envoy"), client_key, [(client_usage, False)]))
    _write_key(pki.client_key, client_key)
    return pki
