"""`extauthz serve --workers N`: N server processes sharing one port (SO_REUSEPORT).

The supervisor creates no gRPC object at all: it checks that the port is free, then starts
each worker as a fresh interpreter running the same command line with
`EXTAUTHZ_WORKER_INDEX` set (grpcio and fork do not mix). The kernel spreads connections
over the workers. A worker that dies is restarted with backoff; one that keeps dying
(`CRASH_LOOP` deaths within `CRASH_WINDOW` seconds) stops everything with exit code 1.
SIGTERM/SIGINT are forwarded; the supervisor exits 0 when every worker stopped cleanly.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from extauthz.errors import ConfigError

log = logging.getLogger("extauthz.supervisor")

WORKER_ENV = "EXTAUTHZ_WORKER_INDEX"
CRASH_LOOP = 5
CRASH_WINDOW = 30.0


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover (not Linux)
        return os.cpu_count() or 1


def is_worker() -> bool:
    return WORKER_ENV in os.environ


def check_port_free(listen: str) -> None:
    """Fail early, and clearly, if something already listens there (with or without reuse)."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"  # noqa: S104 (whatever the user asked for)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, int(port)))
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot listen on {listen}: {e}") from e


def stop_on_signals() -> threading.Event:
    """An event that SIGTERM and SIGINT set (the handlers do nothing else)."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _signo, _frame: stop.set())
    return stop


def supervise(argv: Sequence[str], workers: int, listen: str, grace: float) -> int:
    """Run `workers` copies of `extauthz <argv>` until SIGTERM/SIGINT; the exit code."""
    check_port_free(listen)
    stop = stop_on_signals()

    command = [sys.executable, "-m", "extauthz", *argv]

    def spawn(index: int) -> subprocess.Popen[bytes]:
        env = {**os.environ, WORKER_ENV: str(index)}
        return subprocess.Popen(command, env=env)  # noqa: S603 (our own command line)

    procs = {i: spawn(i) for i in range(workers)}
    deaths: list[float] = []
    log.info("started %d workers on %s (pids %s)", workers, listen, [p.pid for p in procs.values()])
    code = 0
    while not stop.is_set():
        time.sleep(0.2)
        for index, proc in list(procs.items()):
            rc = proc.poll()
            if rc is None or stop.is_set():
                continue
            now = time.monotonic()
            deaths = [t for t in deaths if now - t < CRASH_WINDOW] + [now]
            if len(deaths) >= CRASH_LOOP:
                log.error("workers keep dying (%d in %.0fs): stopping", len(deaths), CRASH_WINDOW)
                stop.set()
                code = 1
                break
            log.warning("worker %d (pid %d) exited with %d: restarting", index, proc.pid, rc)
            time.sleep(min(0.2 * len(deaths), 2.0))
            procs[index] = spawn(index)
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace + 5
    for proc in procs.values():
        try:
            rc = proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        if rc not in (0, -signal.SIGTERM) and code == 0:
            code = 1
    log.info("all workers stopped")
    return code
