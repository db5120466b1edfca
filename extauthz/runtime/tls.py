"""TLS on the Check port: server credentials for `serve`, client credentials for `health`.

With `--tls-cert` and `--tls-key` the port speaks TLS; adding `--tls-client-ca` makes it
mutual: only clients presenting a certificate signed by that CA (Envoy's) get an answer,
so the Check port stops being an oracle for whoever can reach it.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from typing import Any, Literal

import grpc

from extauthz.config import Settings
from extauthz.errors import ConfigError
from extauthz.files import describe, read_regular_file

MAX_PEM_BYTES = 1 << 20


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


def server_credentials(cert: str, key: str, client_ca: str) -> Any:
    """grpc server credentials; with `client_ca`, client certificates are required."""
    chain = _read(cert, "--tls-cert")
    private = _read(key, "--tls-key")
    roots = _read(client_ca, "--tls-client-ca") if client_ca else None
    return grpc.ssl_server_credentials(
        [(private, chain)], root_certificates=roots, require_client_auth=roots is not None
    )


def for_server(settings: Settings) -> Any | None:
    """The Check port's credentials from the settings, None for plaintext (ConfigError when
    the files are incomplete or unreadable)."""
    if not enabled(settings.tls_cert, settings.tls_key, settings.tls_client_ca):
        return None
    return server_credentials(settings.tls_cert, settings.tls_key, settings.tls_client_ca)


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
