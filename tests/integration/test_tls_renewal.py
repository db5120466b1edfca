"""Certificates renewed under traffic: the real Envoy calls extauthz over mutual TLS while a
steady stream of requests goes through it, and the files of both sides are replaced as the
kubelet replaces a renewed Secret's (tests/support/secret_volume.py): new pairs from the same
CA, then a rollover to a new CA through a bundle of both, and at last the old CA dropped.
Not one request fails; after each step new handshakes carry the new certificates: the one
extauthz presents (read here with `ssl`) and the one Envoy presents (its admin /certs), and
once the old CA is dropped extauthz refuses a certificate it signed."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from extauthz.config import Settings
from extauthz.dev import envoy_config
from extauthz.dev import stack as stack_module
from extauthz.dev.local_pki import CA_FILE, CLIENT_CERT, CLIENT_KEY, SERVER_CERT, LocalCa
from extauthz.dev.stack import Stack, free_base_port
from tests.support.metrics import scrape
from tests.support.procs import REPO, require_binary, wait_for
from tests.support.secret_volume import swap

pytestmark = [pytest.mark.redis, pytest.mark.envoy]

RENEW_AFTER = 20  # requests per connection to extauthz: a new handshake every few dozen ms
CHECK_TIMEOUT = "2s"  # this test counts TLS failures, not a busy machine's slow Checks


def _often_renewed(render: Any) -> Any:
    """The stack's Envoy config with connections to extauthz renewed after RENEW_AFTER
    requests and a patient ext_authz timeout (nothing else changed)."""

    def rendered(*args: Any, **kwargs: Any) -> str:
        config = yaml.safe_load(render(*args, **kwargs))
        for cluster in config["static_resources"]["clusters"]:
            if cluster["name"] == "extauthz":
                options = cluster["typed_extension_protocol_options"]
                (protocol,) = options.values()
                protocol["common_http_protocol_options"]["max_requests_per_connection"] = (
                    RENEW_AFTER
                )
        for listener in config["static_resources"]["listeners"]:
            manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
            for http_filter in manager["http_filters"]:
                if http_filter["name"] == envoy_config.EXT_AUTHZ_FILTER:
                    http_filter["typed_config"]["grpc_service"]["timeout"] = CHECK_TIMEOUT
        return str(yaml.safe_dump(config, sort_keys=False))

    return rendered


@pytest.fixture
def renewable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Stack, LocalCa]]:
    """The local stack with its TLS directory laid out as a mounted Secret, from a CA the
    test keeps (to issue the renewals)."""
    require_binary("redis-server")
    require_binary("envoy")
    monkeypatch.setattr(stack_module, "render", _often_renewed(envoy_config.render))
    stack = Stack(free_base_port(), tmp_path / "stack", REPO / "examples/policy.yaml", Settings())
    ca = LocalCa("extauthz CA 1")
    swap(stack.pki.ca.parent, ca.files())
    stack.start()
    try:
        yield stack, ca
    finally:
        stack.stop()


class Traffic:
    """Requests through Envoy, back to back from a few threads, until stopped: every status
    (or error) counted."""

    def __init__(self, port: int, threads: int = 2) -> None:
        self.port = port
        self.outcomes: Counter[str] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        connection = HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self._stop.is_set():
            try:
                connection.request("GET", "/ping")
                response = connection.getresponse()
                body = response.read()
                outcome = str(response.status)
            except OSError as e:
                connection.close()
                connection = HTTPConnection("127.0.0.1", self.port, timeout=10)
                outcome, body = type(e).__name__, str(e).encode()
            with self._lock:
                self.outcomes[outcome] += 1
                if outcome != "200":
                    self.failures.append(f"{outcome} {body[:200]!r}")
        connection.close()

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.outcomes.values())

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)


def _serial(pem: bytes) -> int:
    return x509.load_pem_x509_certificate(pem).serial_number


def presented_by_extauthz(stack: Stack, client: Path) -> int | None:
    """The serial of the certificate extauthz presents to a new handshake made with the
    client certificate in `client` (trusting the stack's CA bundle); None when refused."""
    context = ssl.create_default_context(cafile=str(stack.pki.ca))
    context.check_hostname = False  # (127.0.0.1; the chain is what matters here)
    context.load_cert_chain(str(client / CLIENT_CERT), str(client / CLIENT_KEY))
    context.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection(("127.0.0.1", stack.ports.extauthz.port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="extauthz") as tls,
        ):
            der = tls.getpeercert(binary_form=True)
            tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")  # an HTTP/2 client's preface
            if not tls.recv(1):  # (TLS 1.3: a refused client certificate shows here)
                return None
    except (ssl.SSLError, OSError):
        return None
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


def envoy_admin(stack: Stack, path: str) -> str:
    url = f"http://127.0.0.1:{stack.ports.admin.port}{path}"
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def presented_by_envoy(stack: Stack) -> set[int]:
    """The serials of the client certificates Envoy holds for new connections (/certs)."""
    serials = set()
    for context in json.loads(envoy_admin(stack, "/certs"))["certificates"]:
        for cert in context.get("cert_chain", []):
            serials.add(int(cert["serial_number"], 16))
    return serials


def connections_to_extauthz(stack: Stack) -> int:
    stats = envoy_admin(stack, "/stats?filter=^cluster\\.extauthz\\.upstream_cx_total$")
    return int(stats.split(":")[1])


def renew(stack: Stack, traffic: Traffic, files: dict[str, bytes]) -> None:
    """Swap in `files` and wait until both sides present the new certificates to new
    handshakes, and until Envoy made new connections to extauthz with them."""
    swap(stack.pki.ca.parent, files)
    server, client = _serial(files[SERVER_CERT]), _serial(files[CLIENT_CERT])
    wait_for(lambda: client in presented_by_envoy(stack), 10, "Envoy's new client certificate")
    volume = stack.pki.ca.parent
    wait_for(lambda: presented_by_extauthz(stack, volume) == server, 10, "extauthz's new one")
    opened, served = connections_to_extauthz(stack), traffic.total
    wait_for(
        lambda: connections_to_extauthz(stack) >= opened + 5 and traffic.total >= served + 200,
        30,
        "new connections from Envoy to extauthz, and requests through them",
    )
    assert not traffic.failures, traffic.failures[:5]


def test_certificates_renewed_under_traffic(renewable: tuple[Stack, LocalCa]) -> None:
    stack, first_ca = renewable
    successor = LocalCa("extauthz CA 2")
    with Traffic(stack.ports.external.port) as traffic:
        wait_for(lambda: traffic.total >= 200, 30, "traffic through Envoy")
        # cert-manager's renewal: new keys and certificates, the same CA
        renew(stack, traffic, first_ca.files())
        # a rollover: both sides trust both CAs, then get certificates from the new one,
        # then trust it alone
        renew(stack, traffic, first_ca.files(trusted=(successor,)))
        renew(stack, traffic, successor.files(trusted=(first_ca,)))
        last = successor.files()
        renew(stack, traffic, last)
        time.sleep(1.5)  # more traffic on the last files
    assert not traffic.failures, (traffic.outcomes, traffic.failures[:5])
    assert traffic.outcomes["200"] >= 1000, traffic.outcomes
    # the old CA is gone from extauthz's client CA bundle: a certificate it signed is refused
    stale = first_ca.files(trusted=(successor,))
    probe = stack.pki.ca.parent.parent / "stale"
    probe.mkdir()
    for name in (CA_FILE, CLIENT_CERT, CLIENT_KEY):
        (probe / name).write_bytes(stale[name])
    assert presented_by_extauthz(stack, probe) is None
    assert presented_by_extauthz(stack, stack.pki.ca.parent) == _serial(last[SERVER_CERT])
    updates = envoy_admin(stack, "/stats?filter=^cluster\\.extauthz\\..*ssl_context_update_by_sds$")
    assert int(updates.split(":")[1]) >= 4, updates  # Envoy's SDS reloads
    metrics = {
        sample.name: sample.value
        for family in text_string_to_metric_families(scrape(stack.settings.metrics_listen))
        for sample in family.samples
    }
    assert metrics["extauthz_tls_reloads_total"] == 4
    expiry = x509.load_pem_x509_certificate(last[SERVER_CERT]).not_valid_after_utc.timestamp()
    assert metrics["extauthz_tls_certificate_expiry_timestamp_seconds"] == expiry
    log = stack.extauthz.log.read_text()
    assert log.count("reloaded the certificate files") >= 4, log[-3000:]
    assert "cannot be used" not in log
