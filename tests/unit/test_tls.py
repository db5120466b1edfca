"""TLS settings for the Check port: incomplete or unusable files are one-line errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from extauthz.dev.local_pki import make_local_pki
from extauthz.errors import ConfigError
from extauthz.runtime import tls


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
