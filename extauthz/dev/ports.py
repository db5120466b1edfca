"""Loopback ports for the local stack, the tests and bench/: finding free ones, waiting for one."""

from __future__ import annotations

import os
import random
import socket
import tempfile
import time
from pathlib import Path

from extauthz.errors import StackError

_HANDED_OUT: set[int] = set()

# Ports handed out below the kernel's ephemeral range (32768-60999 by default: where
# outgoing connections and bind(0) take theirs), above `extauthz up`'s default ports;
# stacks run side by side take rows from ROWS.
SINGLE = (12000, 20000)
ROWS = (20000, 32000)
# A port handed out is reserved for every process of this user that uses this module, for
# as long as it may take the server it is for to bind it (two test workers picking the same
# free port, each before the other's server bound it, was a failure once in ~25 suite runs).
RESERVATIONS = Path(tempfile.gettempdir()) / f"extauthz-ports-{os.getuid()}"
RESERVED_FOR = 300.0


def reserve(port: int) -> bool:
    """Whether `port` is now reserved for this process: False when another process reserved it
    in the last RESERVED_FOR seconds. Where reservations cannot be written, True (as before
    they existed)."""
    path = RESERVATIONS / str(port)
    try:
        RESERVATIONS.mkdir(mode=0o700, exist_ok=True)
        for _ in range(2):
            try:
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
                return True
            except FileExistsError:
                try:
                    if time.time() - path.stat().st_mtime < RESERVED_FOR:
                        return False
                    path.unlink()  # (a stale reservation: taken again)
                except FileNotFoundError:
                    pass
        return False
    except OSError:
        return True


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
    """`count` distinct free ports, none handed out before by this process nor reserved by
    another (see `reserve`)."""
    chosen: list[int] = []
    for _ in range(100 * count):
        if len(chosen) == count:
            return chosen
        port = random.randrange(*SINGLE)  # noqa: S311 (not security)
        if port not in _HANDED_OUT and reserve(port) and can_bind(port):
            _HANDED_OUT.add(port)
            chosen.append(port)
    if len(chosen) == count:
        return chosen
    raise StackError(f"no {count} free ports in {SINGLE[0]}-{SINGLE[1] - 1}")


def free_port() -> int:
    """One free port (see `free_ports`)."""
    return free_ports(1)[0]


def free_ports_in_a_row(count: int) -> int:
    """A base port such that base .. base+count-1 are free now and reserved for this process
    (see `reserve`), for stacks run side by side."""
    for _ in range(100):
        base = random.randrange(ROWS[0], ROWS[1] - count)  # noqa: S311 (not security)
        row = range(base, base + count)
        if all(reserve(p) for p in row) and all(can_bind(p) for p in row):
            return base
    raise StackError(f"no {count} consecutive free ports")
