from __future__ import annotations

import socket

import pytest

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
    ports = free_ports(20) + [free_port() for _ in range(20)]
    assert len(set(ports)) == 40
    assert all(can_bind(p) for p in ports)


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
