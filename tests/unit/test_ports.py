from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from extauthz.dev import ports
from extauthz.dev.ports import (
    can_bind,
    free_port,
    free_ports,
    free_ports_in_a_row,
    port_open,
    wait_port,
)
from extauthz.errors import StackError


def test_free_ports_are_distinct_and_never_handed_out_twice() -> None:
    handed = free_ports(20) + [free_port() for _ in range(20)]
    assert len(set(handed)) == 40
    assert all(can_bind(p) for p in handed)
    assert all(12000 <= p < 20000 for p in handed)  # (below the kernel's ephemeral range)


def test_a_port_another_process_reserved_is_not_handed_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process's fresh reservation is skipped; a stale one (its server has long
    bound the port, or never will) is taken; so are ports when none can be written."""
    base = free_ports_in_a_row(4)
    monkeypatch.setattr(ports, "RESERVATIONS", tmp_path / "reserved")
    monkeypatch.setattr(ports, "SINGLE", (base, base + 3))
    (tmp_path / "reserved").mkdir()
    for port in (base, base + 1):
        (tmp_path / "reserved" / str(port)).touch()
    stale = tmp_path / "reserved" / str(base + 2)
    stale.touch()
    os.utime(stale, (time.time() - 301, time.time() - 301))
    assert free_ports(1) == [base + 2]
    with pytest.raises(StackError, match=f"no 1 free ports in {base}-{base + 2}"):
        free_port()  # (the other two are reserved, the third is handed out)
    monkeypatch.setattr(ports, "RESERVATIONS", tmp_path / "file" / "reserved")
    (tmp_path / "file").write_text("not a directory")
    assert ports.reserve(base) and ports.reserve(base)


def test_a_row_of_free_ports() -> None:
    base = free_ports_in_a_row(8)
    assert base >= 20000 and base + 7 < 32000
    assert all(can_bind(base + i) for i in range(8))


def test_open_busy_and_waiting() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        assert not can_bind(port) and not port_open(port)
        with pytest.raises(StackError, match=f"nothing listens on port {port}"):
            wait_port(port, timeout=0.2)
        s.listen()
        assert port_open(port)
        wait_port(port, timeout=1)
