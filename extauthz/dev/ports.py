"""Loopback ports for the local stack, the tests and bench/: finding free ones, waiting for one."""

from __future__ import annotations

import random
import socket
import time

from extauthz.errors import StackError

_HANDED_OUT: set[int] = set()


def can_bind(port: int) -> bool:
    """Whether nothing holds `port` on 127.0.0.1 now."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def port_open(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:`port`."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_port(port: int, timeout: float = 20) -> None:
    """Return once 127.0.0.1:`port` accepts connections; StackError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not port_open(port):
        if time.monotonic() > deadline:
            raise StackError(f"nothing listens on port {port} after {timeout:g}s")
        time.sleep(0.05)


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports, none handed out before by this process (a port bound and
    released can come back from the kernel at once)."""
    chosen: list[int] = []
    while len(chosen) < count:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            chosen.append(port)
    return chosen


def free_port() -> int:
    """One free port (see `free_ports`)."""
    return free_ports(1)[0]


def free_ports_in_a_row(count: int) -> int:
    """A base port such that base .. base+count-1 are free now, below the kernel's ephemeral
    range (where outgoing connections take their ports), for stacks run side by side."""
    for _ in range(100):
        base = random.randrange(20000, 32000 - count)  # noqa: S311 (not security)
        if all(can_bind(base + i) for i in range(count)):
            return base
    raise StackError(f"no {count} consecutive free ports")
