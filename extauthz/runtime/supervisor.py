"""`extauthz serve --workers N`: N server processes sharing one port (SO_REUSEPORT).

The supervisor creates no gRPC object at all: it checks that the port is free, then starts
each worker as a fresh interpreter (grpcio and fork do not mix) running runtime/worker.py
with its index, and hands it the resolved Settings as JSON on its standard input (secrets
stay out of argv and the environment). The kernel spreads connections
over the workers. A worker that dies is restarted with backoff; one that keeps dying
(`CRASH_LOOP` deaths within `CRASH_WINDOW` seconds) stops everything with exit code 1.
SIGTERM/SIGINT are forwarded; the supervisor exits 0 when every worker stopped cleanly.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from extauthz.config import Settings, join_address, split_address
from extauthz.errors import ConfigError
from extauthz.runtime.metrics import serve_merged

log = logging.getLogger("extauthz.supervisor")

CRASH_LOOP = 5
CRASH_WINDOW = 30.0


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover (not Linux)
        return os.cpu_count() or 1


def check_port_free(listen: str) -> None:
    """Fail early, and clearly, if something already listens there (with or without reuse)."""
    host, port = split_address(listen)
    host = host or "0.0.0.0"  # noqa: S104 (whatever the user asked for)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot listen on {listen}: {e}") from e


def stop_on_signals() -> threading.Event:
    """An event that SIGTERM and SIGINT set (the handlers do nothing else)."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _signo, _frame: stop.set())
    return stop


def worker_settings(settings: Settings, workers: int) -> Settings:
    """What each of `workers` runs with. The failed-authentication limit is per server, not
    per worker: each worker holds its share of the burst and rate (a client's requests spread
    over the workers; one whose requests all land on one worker is limited sooner, never
    later). Over any time t a client address makes at most max(burst, workers) + rate * t
    failed attempts in all."""
    burst = settings.auth_failure_burst
    return dataclasses.replace(
        settings,
        auth_failure_burst=max(1, burst // workers) if burst > 0 else 0,
        auth_failure_rate=settings.auth_failure_rate / workers,
    )


def supervise(settings: Settings, workers: int) -> int:
    """Run `workers` server processes with `settings` until SIGTERM/SIGINT; the exit code."""
    listen, grace = settings.listen, settings.shutdown_grace
    check_port_free(listen)
    stop = stop_on_signals()
    worker_metrics = [worker_metrics_address(settings.metrics_listen, i) for i in range(workers)]
    metrics = None
    if settings.metrics_listen:  # one endpoint: the total of the workers' own
        try:
            metrics = serve_merged(settings.metrics_listen, lambda: worker_metrics)
        except OSError as e:
            raise ConfigError(f"cannot serve metrics on {settings.metrics_listen}: {e}") from e

    def spawn(index: int) -> subprocess.Popen[bytes]:
        own = dataclasses.replace(
            worker_settings(settings, workers), metrics_listen=worker_metrics[index]
        )
        command = [sys.executable, "-m", "extauthz.runtime.worker", str(index)]
        proc = subprocess.Popen(command, stdin=subprocess.PIPE)  # noqa: S603 (our own)
        assert proc.stdin is not None  # noqa: S101 (stdin=PIPE)
        proc.stdin.write(json.dumps(dataclasses.asdict(own)).encode())
        proc.stdin.close()
        return proc

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
    if metrics is not None:
        metrics.shutdown()
    log.info("all workers stopped")
    return code


def worker_metrics_address(metrics_listen: str, index: int) -> str:
    """Where worker `index` serves its own metrics: the port after the supervisor's + index
    ('' when metrics are off)."""
    if not metrics_listen:
        return ""
    host, port = split_address(metrics_listen)
    return join_address(host or "127.0.0.1", port + 1 + index)
