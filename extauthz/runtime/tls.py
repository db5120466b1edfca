"""TLS on the Check port: server credentials for `serve`, client credentials for `health`.

With `--tls-cert` and `--tls-key` the port speaks TLS; adding `--tls-client-ca` makes it
mutual: only clients presenting a certificate signed by that CA (Envoy's) get an answer,
so the Check port stops being an oracle for whoever can reach it.

Renewal without a restart: the server's credentials are dynamic. At a new handshake (never
per request) gRPC asks `ServerTls.fetch` for the configuration; at most once per
`RELOAD_INTERVAL` it stats the three files (following symlinks, so a Kubernetes Secret's
`..data` swap is seen like an in-place write) and, when they changed, reads and checks them
together: a chain, a key that belongs to its first certificate, a client CA bundle. What
passes serves every handshake from then on (connections already open keep theirs); what does
not (half written, a key from another pair, a missing file) leaves the previous files in
service and logs one warning, until the files change again. At start the same checks are
errors (fail closed).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from extauthz.config import Settings
from extauthz.errors import ConfigError
from extauthz.files import describe, read_regular_file

log = logging.getLogger("extauthz.tls")

MAX_PEM_BYTES = 1 << 20
RELOAD_INTERVAL = 1.0  # seconds: the files are looked at no more often than this
# a file modified this recently may still be written to within the same mtime tick: its
# stat is not trusted to tell the next change, so the next look reads it again
SETTLE_SECONDS = 2.0


def _read(path: str, what: str) -> bytes:
    try:
        data = read_regular_file(path, MAX_PEM_BYTES)
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {describe(e)}") from e
    if b"-----BEGIN " not in data:
        raise ConfigError(f"{what} {path} is not PEM (expected -----BEGIN ...)")
    return data


def enabled(cert: str, key: str, client_ca: str) -> bool:
    """Whether TLS is asked for; raises ConfigError for an incomplete set of files."""
    if not (cert or key or client_ca):
        return False
    if not (cert and key):
        raise ConfigError(
            "TLS needs both --tls-cert and --tls-key (and --tls-client-ca for mutual TLS)"
        )
    return True


def _public(key: Any) -> bytes:
    return bytes(
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _certificates(data: bytes, what: str, path: str) -> list[x509.Certificate]:
    try:
        found = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise ConfigError(f"{what} {path} holds no readable certificate: {e}") from e
    # (the parser skips a block cut short after whole ones: a file still being written)
    begins = data.count(b"-----BEGIN CERTIFICATE-----")
    ends = data.count(b"-----END CERTIFICATE-----")
    if not (
        len(found) == begins == ends and data.count(b"-----BEGIN ") == data.count(b"-----END ")
    ):
        raise ConfigError(f"{what} {path} has a PEM block cut short (still being written?)")
    return found


@dataclass(frozen=True)
class ServerFiles:
    """The PEM contents of the three files, read and checked together."""

    chain: bytes
    key: bytes = field(repr=False)  # (never in a log line)
    roots: bytes | None
    serial: int  # of the leaf certificate, for the log line and tests
    not_after: float  # the leaf's expiry, seconds since the epoch

    def configuration(self) -> Any:
        """As gRPC takes it: a ServerCertificateConfiguration."""
        return grpc.ssl_server_certificate_configuration(
            [(self.key, self.chain)], root_certificates=self.roots
        )


def load_server_files(cert: str, key: str, client_ca: str) -> ServerFiles:
    """Read the certificate chain, its key and the client CA bundle ("" for none), and check
    that they make a usable set; ConfigError names the file that does not. The key's bytes
    appear in no message."""
    chain = _read(cert, "--tls-cert")
    private = _read(key, "--tls-key")
    roots = _read(client_ca, "--tls-client-ca") if client_ca else None
    leaf = _certificates(chain, "--tls-cert", cert)[0]
    try:
        loaded = serialization.load_pem_private_key(private, password=None)
    except (ValueError, TypeError) as e:  # (the library's message never quotes the key)
        raise ConfigError(f"--tls-key {key} is not a readable private key") from e
    if _public(loaded.public_key()) != _public(leaf.public_key()):
        raise ConfigError(
            f"--tls-key {key} does not belong to the certificate in --tls-cert {cert}"
        )
    if roots is not None:
        _certificates(roots, "--tls-client-ca", client_ca)
    return ServerFiles(
        chain, private, roots, leaf.serial_number, leaf.not_valid_after_utc.timestamp()
    )


FileStat = tuple[int, int, int, int, int]  # device, inode, size, mtime and ctime (ns)
Signature = tuple[FileStat | None, ...]


class ServerTls:
    """The Check port's TLS files, reloaded when they change (see the module's docstring)."""

    def __init__(
        self,
        cert: str,
        key: str,
        client_ca: str,
        interval: float = RELOAD_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Reads the files now: ConfigError when they are not a usable set."""
        self.paths = (cert, key, client_ca)
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()
        signature = self._stat()
        self.files = load_server_files(cert, key, client_ca)
        self.reloads = 0
        self._known = signature if self._settled(signature) else None
        self._warned: Signature | None = None
        self._failed = False
        self._looked_at = clock()

    @property
    def mutual(self) -> bool:
        return self.files.roots is not None

    def credentials(self) -> Any:
        """grpc server credentials serving the files as they are at each handshake;
        with a client CA, client certificates are required."""
        return grpc.dynamic_ssl_server_credentials(
            self.files.configuration(),
            self.fetch,
            require_client_authentication=self.mutual,
        )

    def _stat(self) -> Signature:
        signature: list[FileStat | None] = []
        for path in self.paths:
            if not path:
                signature.append(None)
                continue
            try:
                s = os.stat(path)  # (follows the symlinks: what a read would get)
            except OSError:
                signature.append(None)
                continue
            signature.append((s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns))
        return tuple(signature)

    @staticmethod
    def _settled(signature: Signature) -> bool:
        newest = max((entry[3] for entry in signature if entry is not None), default=0)
        return time.time() - newest / 1e9 >= SETTLE_SECONDS

    def fetch(self) -> Any | None:
        """gRPC's certificate fetcher, called at each new handshake: a new configuration when
        the files changed into a usable set, None to keep the one in service. Never raises."""
        try:
            return self._fetch()
        except Exception:  # (gRPC would log a fetcher's exception at every handshake)
            if not self._failed:
                self._failed = True  # once: this is a bug, not a state of the files
                log.exception("TLS: looking at the certificate files failed; keeping them")
            return None

    def _fetch(self) -> Any | None:
        now = self.clock()
        if now - self._looked_at < self.interval:
            return None
        if not self._lock.acquire(blocking=False):
            return None  # another handshake is looking right now
        try:
            self._looked_at = now
            signature = self._stat()
            if signature == self._known:
                return None
            try:
                files = load_server_files(*self.paths)
            except ConfigError as e:
                if signature != self._warned:
                    self._warned = signature
                    log.warning(
                        "TLS: the certificate files changed but cannot be used (%s); new "
                        "connections still get the previous certificate (serial %x) until "
                        "they are fixed",
                        e,
                        self.files.serial,
                    )
                return None
            self._warned = None
            self._known = signature if self._settled(signature) else None
            if files == self.files:
                return None
            previous, self.files = self.files, files
            self.reloads += 1
            log.info(
                "TLS: reloaded the certificate files: serial %x (was %x), valid until %s%s",
                files.serial,
                previous.serial,
                time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(files.not_after)),
                "" if files.roots == previous.roots else "; the client CA bundle changed",
            )
            return files.configuration()
        finally:
            self._lock.release()


def server_credentials(cert: str, key: str, client_ca: str) -> Any:
    """grpc server credentials; with `client_ca`, client certificates are required. The
    files are reloaded when they change (ServerTls)."""
    return ServerTls(cert, key, client_ca).credentials()


def for_server(settings: Settings) -> ServerTls | None:
    """The Check port's TLS from the settings, None for plaintext (ConfigError when the
    files are incomplete, unreadable or not a matching set)."""
    if not enabled(settings.tls_cert, settings.tls_key, settings.tls_client_ca):
        return None
    return ServerTls(settings.tls_cert, settings.tls_key, settings.tls_client_ca)


def channel_credentials(ca: str, cert: str, key: str) -> Any:
    """grpc channel credentials trusting `ca`, presenting `cert`/`key` when given."""
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca, "--tls-ca"),
        private_key=_read(key, "--tls-key") if key else None,
        certificate_chain=_read(cert, "--tls-cert") if cert else None,
    )


def listener_kind(host: str, port: int, timeout: float) -> Literal["tls", "plain", "none"]:
    """What answers at host:port, for a failed probe's message: a TLS server ("tls": it
    answers a TLS ClientHello with a TLS record), something else ("plain": gRPC without
    TLS closes or answers HTTP/2), or nothing accepts the connection ("none"). Nothing is
    verified: this only names which settings to give."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing)
    with contextlib.suppress(ssl.SSLWantReadError):
        client.do_handshake()  # writes the ClientHello into `outgoing`
    try:
        sock = socket.create_connection((host, port), timeout)
    except OSError:  # refused, unreachable, a name that does not resolve
        return "none"
    with sock:
        try:
            sock.sendall(outgoing.read())
            first = sock.recv(3)
        except OSError:  # accepted, then reset or silent: not a TLS server
            return "plain"
    # a TLS record: content type handshake (22) or alert (21), protocol version 3.x
    return "tls" if len(first) == 3 and first[0] in (21, 22) and first[1] == 3 else "plain"
