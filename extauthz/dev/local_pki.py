"""A throwaway certificate authority for the local stack: mutual TLS between Envoy and extauthz.

Made fresh by `extauthz up` in its state directory (and by the tests): one CA signs the
server certificate of extauthz (DNS name `extauthz`, IP 127.0.0.1) and the client
certificate Envoy presents. For production, use your own CA (or your mesh's); see the
docs/security.md. `LocalCa` keeps the CA's key in memory only (never written): the tests
issue renewed certificates from it, or roll over to a second CA.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_NAME = "extauthz"  # the name Envoy checks in extauthz's certificate (SNI and SAN)

# the files of a LocalPki, by name in its directory
CA_FILE, SERVER_CERT, SERVER_KEY, CLIENT_CERT, CLIENT_KEY = (
    "ca.crt",
    "extauthz.crt",
    "extauthz.key",
    "envoy.crt",
    "envoy.key",
)


@dataclass(frozen=True)
class LocalPki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path  # Envoy's
    client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class LocalCa:
    """A CA whose key lives in this object only; it issues extauthz's server certificate and
    Envoy's client certificate."""

    def __init__(self, name: str = "extauthz local CA", days: int = 30) -> None:
        self.name = name
        self.days = days
        self._key = ec.generate_private_key(ec.SECP256R1())
        self.certificate = self._issue(
            _name(name), self._key.public_key(), [(x509.BasicConstraints(True, 0), True)], days
        )

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def _issue(
        self,
        subject: x509.Name,
        public_key: ec.EllipticCurvePublicKey,
        extensions: list[tuple[x509.ExtensionType, bool]],
        days: int,
    ) -> x509.Certificate:
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(_name(self.name))
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
        )
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(self._key, hashes.SHA256())

    def server_pair(self, days: int | None = None) -> tuple[bytes, bytes]:
        """A new key and certificate for extauthz (PEM certificate, PEM key)."""
        key = ec.generate_private_key(ec.SECP256R1())
        names = x509.SubjectAlternativeName(
            [x509.DNSName(SERVER_NAME), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        )
        # no extended key usage: `extauthz health` in the same container presents it as a client
        cert = self._issue(
            _name(SERVER_NAME), key.public_key(), [(names, False)], days or self.days
        )
        return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)

    def client_pair(self, days: int | None = None) -> tuple[bytes, bytes]:
        """A new key and client certificate for Envoy (PEM certificate, PEM key)."""
        key = ec.generate_private_key(ec.SECP256R1())
        usage = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
        cert = self._issue(_name("envoy"), key.public_key(), [(usage, False)], days or self.days)
        return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)

    def files(self, days: int | None = None, trusted: tuple[LocalCa, ...] = ()) -> dict[str, bytes]:
        """A LocalPki's files, by name: new pairs from this CA, and `ca.crt` trusting this CA
        and `trusted` (a bundle, for a rollover from or to another CA)."""
        server_cert, server_key = self.server_pair(days)
        client_cert, client_key = self.client_pair(days)
        bundle = b"".join(ca.pem for ca in (self, *trusted))
        return {
            CA_FILE: bundle,
            SERVER_CERT: server_cert,
            SERVER_KEY: server_key,
            CLIENT_CERT: client_cert,
            CLIENT_KEY: client_key,
        }


def pki_in(directory: Path) -> LocalPki:
    """The paths of a LocalPki's files in `directory`."""
    return LocalPki(
        ca=directory / CA_FILE,
        server_cert=directory / SERVER_CERT,
        server_key=directory / SERVER_KEY,
        client_cert=directory / CLIENT_CERT,
        client_key=directory / CLIENT_KEY,
    )


def make_local_pki(
    directory: Path, days: int = 30, ca_name: str = "extauthz local CA", ca: LocalCa | None = None
) -> LocalPki:
    """A CA (new unless given), a server certificate for extauthz and a client certificate
    for Envoy, written to `directory` (the keys readable by their owner only)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in (ca or LocalCa(ca_name, days)).files(days).items():
        write_file(directory / name, data, private=name in (SERVER_KEY, CLIENT_KEY))
    return pki_in(directory)


def write_file(path: Path, data: bytes, private: bool) -> None:
    """`data` into `path`; a private one (a key) readable by its owner only, from the start."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as out:
        if private:
            os.fchmod(out.fileno(), 0o600)  # (an existing file keeps its mode otherwise)
        out.write(data)
