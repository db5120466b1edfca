"""TLS settings for the Check port: incomplete or unusable files are one-line errors; renewed
files are served from the next handshake, unusable ones never replace the files in service."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest
from cryptography import x509

from extauthz.dev.local_pki import (
    CA_FILE,
    SERVER_CERT,
    SERVER_KEY,
    LocalCa,
    make_local_pki,
    pki_in,
)
from extauthz.errors import ConfigError
from extauthz.runtime import tls
from tests.support.secret_volume import swap


def test_off_unless_asked_for() -> None:
    assert tls.enabled("", "", "") is False


@pytest.mark.parametrize(("cert", "key", "ca"), [("c", "", ""), ("", "k", ""), ("", "", "ca")])
def test_incomplete_sets_are_refused(cert: str, key: str, ca: str) -> None:
    with pytest.raises(ConfigError, match="needs both --tls-cert and --tls-key"):
        tls.enabled(cert, key, ca)


def test_credentials_from_a_local_pki(tmp_path: Path) -> None:
    pki = make_local_pki(tmp_path)
    assert tls.server_credentials(str(pki.server_cert), str(pki.server_key), str(pki.ca))
    assert tls.channel_credentials(str(pki.ca), str(pki.client_cert), str(pki.client_key))
    assert oct(pki.server_key.stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("kind", ["missing", "fifo", "device", "not pem", "huge"])
def test_unusable_files_are_named(tmp_path: Path, kind: str) -> None:
    pki = make_local_pki(tmp_path / "pki")
    bad = tmp_path / "bad"
    if kind == "fifo":
        os.mkfifo(bad)
    elif kind == "device":
        bad = Path("/dev/zero")
    elif kind == "not pem":
        bad.write_bytes(b"\x00\xff garbage")
    elif kind == "huge":
        bad.write_bytes(b"-----BEGIN " + b"x" * (2 << 20))
    with pytest.raises(ConfigError, match=f"--tls-cert {bad}"):
        tls.server_credentials(str(bad), str(pki.server_key), "")


# --- reloading: the files renewed in place while the server runs ----------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _install(directory: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (directory / name).write_bytes(data)


def _reloading(directory: Path, clock: Clock) -> tls.ServerTls:
    pki = pki_in(directory)
    return tls.ServerTls(
        str(pki.server_cert), str(pki.server_key), str(pki.ca), interval=1.0, clock=clock
    )


def _serial(files: dict[str, bytes]) -> int:
    return x509.load_pem_x509_certificate(files[SERVER_CERT]).serial_number


@pytest.fixture
def ca() -> LocalCa:
    return LocalCa()


def test_renewed_files_are_served_from_the_next_handshake(
    tmp_path: Path, ca: LocalCa, caplog: pytest.LogCaptureFixture
) -> None:
    first, renewed = ca.files(), ca.files()
    _install(tmp_path, first)
    clock = Clock()
    server = _reloading(tmp_path, clock)
    assert server.mutual and server.files.serial == _serial(first)
    assert server.fetch() is None  # unchanged
    _install(tmp_path, renewed)
    assert server.fetch() is None  # looked at most once a second: not yet
    clock.now += 1.0
    with caplog.at_level(logging.INFO, "extauthz.tls"):
        assert server.fetch() is not None
    assert server.files.serial == _serial(renewed) and server.reloads == 1
    assert f"serial {_serial(renewed):x}" in caplog.text
    clock.now += 1.0
    assert server.fetch() is None  # the same files: nothing new


def test_a_client_ca_bundle_for_a_rollover_is_taken(tmp_path: Path, ca: LocalCa) -> None:
    _install(tmp_path, ca.files())
    clock = Clock()
    server = _reloading(tmp_path, clock)
    successor = LocalCa("next CA")
    _install(tmp_path, successor.files(trusted=(ca,)))  # new leaves, both CAs trusted
    clock.now += 1.0
    assert server.fetch() is not None
    assert server.files.roots == successor.pem + ca.pem


def test_files_touched_but_unchanged_give_nothing_new(tmp_path: Path, ca: LocalCa) -> None:
    files = ca.files()
    _install(tmp_path, files)
    clock = Clock()
    server = _reloading(tmp_path, clock)
    _install(tmp_path, files)  # rewritten, same bytes
    clock.now += 1.0
    assert server.fetch() is None and server.reloads == 0


@pytest.mark.parametrize(
    "fault",
    [
        "half-written chain",
        "half-written key",
        "mismatched key",
        "missing key",
        "missing client CA",
        "not PEM",
        "intermediate cut short",
    ],
)
def test_unusable_files_keep_the_previous_ones_with_one_warning(
    tmp_path: Path, ca: LocalCa, fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    first = ca.files()
    _install(tmp_path, first)
    clock = Clock()
    server = _reloading(tmp_path, clock)
    renewed = ca.files()
    pki = pki_in(tmp_path)
    if fault == "half-written chain":
        _install(tmp_path, {**renewed, SERVER_CERT: renewed[SERVER_CERT][:200]})
    elif fault == "half-written key":
        _install(tmp_path, {**renewed, SERVER_KEY: renewed[SERVER_KEY][:100]})
    elif fault == "mismatched key":  # the new certificate in place, its key not yet
        _install(tmp_path, {SERVER_CERT: renewed[SERVER_CERT]})
    elif fault == "missing key":
        pki.server_key.unlink()
    elif fault == "missing client CA":
        pki.ca.unlink()
    elif fault == "not PEM":
        pki.server_cert.write_bytes(b"\x00" * 50)
    elif fault == "intermediate cut short":  # whole leaf, the next block half written
        chain = renewed[SERVER_CERT] + first[CA_FILE][:150]
        _install(tmp_path, {**renewed, SERVER_CERT: chain})
    with caplog.at_level(logging.INFO, "extauthz.tls"):
        for _ in range(5):  # looked at again and again: one warning for one state of the files
            clock.now += 1.0
            assert server.fetch() is None
    assert server.files.serial == _serial(first) and server.reloads == 0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, caplog.text
    assert "previous certificate" in warnings[0].getMessage()
    for secret in (first[SERVER_KEY], renewed[SERVER_KEY]):  # no key material in any line
        body = b"".join(secret.splitlines()[1:-1])[:40].decode()
        assert body not in caplog.text
    # the files whole again: served from the next look on
    _install(tmp_path, renewed)
    clock.now += 1.0
    assert server.fetch() is not None and server.files.serial == _serial(renewed)


def test_files_that_stay_put_are_only_stat_ed(
    tmp_path: Path, ca: LocalCa, monkeypatch: pytest.MonkeyPatch
) -> None:
    _install(tmp_path, ca.files())
    old = time.time() - 60  # written a minute ago: their stat tells the next change
    for path in tmp_path.iterdir():
        os.utime(path, (old, old))
    clock = Clock()
    server = _reloading(tmp_path, clock)
    reads: list[str] = []
    real = tls.load_server_files

    def counted(cert: str, key: str, client_ca: str) -> tls.ServerFiles:
        reads.append(cert)
        return real(cert, key, client_ca)

    monkeypatch.setattr(tls, "load_server_files", counted)
    for _ in range(3):
        clock.now += 1.0
        assert server.fetch() is None
    assert reads == []
    _install(tmp_path, ca.files())
    clock.now += 1.0
    assert server.fetch() is not None and len(reads) == 1


def test_a_kubernetes_secret_swap_is_seen(tmp_path: Path, ca: LocalCa) -> None:
    """The kubelet swaps a Secret's `..data` symlink: the paths (symlinks) never change, the
    files they reach do."""
    first, renewed = ca.files(), ca.files()
    swap(tmp_path, first)
    clock = Clock()
    server = _reloading(tmp_path, clock)
    swap(tmp_path, renewed)
    clock.now += 1.0
    assert server.fetch() is not None and server.files.serial == _serial(renewed)


def test_a_failing_look_never_raises_into_grpc(
    tmp_path: Path, ca: LocalCa, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _install(tmp_path, ca.files())
    clock = Clock()
    server = _reloading(tmp_path, clock)

    def broken() -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(server, "_stat", broken)
    with caplog.at_level(logging.INFO, "extauthz.tls"):
        for _ in range(3):
            clock.now += 1.0
            assert server.fetch() is None
    assert caplog.text.count("looking at the certificate files failed") == 1


def test_a_mismatched_key_is_refused_at_start(tmp_path: Path, ca: LocalCa) -> None:
    files = ca.files()
    _install(tmp_path, {**files, SERVER_KEY: ca.files()[SERVER_KEY]})
    with pytest.raises(ConfigError, match="does not belong to the certificate"):
        _reloading(tmp_path, Clock())


def test_a_chain_file_holding_its_key_too_is_accepted(tmp_path: Path, ca: LocalCa) -> None:
    """Some tools write the certificate and its key into one file: whole blocks of another
    kind are no sign of a file being written."""
    files = ca.files()
    _install(tmp_path, {**files, SERVER_CERT: files[SERVER_CERT] + files[SERVER_KEY]})
    assert _reloading(tmp_path, Clock()).files.serial == _serial(files)
