"""Real processes for integration tests: redis-server, extauthz serve, envoy.

In CI (CI=true) a missing binary is a failure, not a skip.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from extauthz.dev.ports import free_port, free_ports_in_a_row, port_open

REPO = Path(__file__).resolve().parents[2]
SERVING = {"serve", "admin", "up"}  # CLI commands that run until stopped


def require_binary(name: str) -> str:
    path = shutil.which(name) or (
        str(Path(sys.executable).parent / name)
        if (Path(sys.executable).parent / name).exists()
        else None
    )
    if path is None:
        message = f"{name} not found on PATH (CI installs it; locally run `make test`)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def stop(proc: subprocess.Popen[bytes], timeout: float = 10) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class RedisServer:
    """A real redis-server on a free loopback port, no persistence."""

    def __init__(self, workdir: Path, port: int | None = None, extra: tuple[str, ...] = ()) -> None:
        self.binary = require_binary("redis-server")
        self.port = port or free_port()
        self.workdir = workdir
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: port_open(self.port), 10, "redis-server")

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None

    def cli(self, *args: str) -> str:
        out = subprocess.run(
            [require_binary("redis-cli"), "-p", str(self.port), *args],
            check=True,
            capture_output=True,
            text=True,
        )
        return out.stdout.strip()


def live_servers(server: RedisServer) -> str:
    """How many extauthz servers are registered as live (their heartbeat keys), as text."""
    return str(len(server.cli("--scan", "--pattern", "extauthz:servers:*").split()))


@contextmanager
def extauthz_serve(
    redis_url: str, log: Path, *extra: str
) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """`extauthz serve` as a subprocess on a free port; yields (port, process)."""
    metrics_port = free_ports_in_a_row(4)  # worker i serves metrics on metrics_port + i
    taken = set(range(metrics_port, metrics_port + 4))
    taken |= {int(v.rpartition(":")[2]) for k, v in pairwise(extra) if k == "--metrics-listen"}
    port = free_port()
    while port in taken:  # (a --metrics-listen of `extra`)
        port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "extauthz",
                "serve",
                "--listen",
                f"127.0.0.1:{port}",
                "--redis-url",
                redis_url,
                "--policy-refresh",
                "0.2",
                "--log-level",
                "debug",
                "--workers",  # one process unless a test asks for more (last flag wins)
                "1",
                "--metrics-listen",
                f"127.0.0.1:{metrics_port}",
                *extra,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    try:
        wait_for(lambda: port_open(port) or proc.poll() is not None, 20, "extauthz serve")
        if proc.poll() is not None:
            raise RuntimeError(f"extauthz serve exited: {log.read_text()}")
        yield port, proc
    finally:
        stop(proc)


def run_cli(
    redis_url: str,
    *args: str,
    check: bool = True,
    env: dict[str, str] | None = None,
    process: bool = False,
) -> subprocess.CompletedProcess[str]:
    """`extauthz ARGS --redis-url URL`, its exit code and output. It runs the CLI's `main` in
    this process (a new interpreter a call costs ~0.4 s of CPU, most of the suite's CLI time),
    with `env` over this process's environment and stdout and stderr captured;
    `process=True` runs it as its own process, for what only a process shows, as the
    commands that serve (and set up logging, signals) always are."""
    argv = [*args, "--redis-url", redis_url]
    if process or args[0] in SERVING or "--watch" in args:
        result = subprocess.run(
            [sys.executable, "-m", "extauthz", *argv],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
            env={**os.environ, **(env or {})},
        )
    else:
        result = _cli_in_process(argv, env or {})
    if check and result.returncode != 0:
        raise AssertionError(f"extauthz {' '.join(args)} failed: {result.stderr}")
    return result


def _cli_in_process(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    from extauthz.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved = dict(os.environ)
    os.environ.update(env)
    # what a process with no logging set up shows: warnings and errors on stderr
    last_resort = logging.StreamHandler(err)
    last_resort.setLevel(logging.WARNING)
    logging.getLogger().addHandler(last_resort)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as e:  # (argparse's usage errors)
                code = 0 if e.code is None else e.code if isinstance(e.code, int) else 1
            sys.stdout.flush()
    finally:
        logging.getLogger().removeHandler(last_resort)
        os.environ.clear()
        os.environ.update(saved)
    return subprocess.CompletedProcess(["extauthz", *argv], code, out.getvalue(), err.getvalue())


@contextmanager
def local_stack(state: Path, settings: Any, policy: Path | None = None) -> Iterator[Any]:
    """The local stack (`extauthz up`'s: Redis, extauthz, the demo model, the console and the
    real Envoy) started in `state` with the server `settings`; stopped on exit."""
    from extauthz.dev.stack import Stack, free_base_port

    require_binary("redis-server")
    require_binary("envoy")
    stack = Stack(free_base_port(), state, policy or REPO / "examples/policy.yaml", settings)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


@contextmanager
def envoy_in_front(
    stack: Any,
    work: Path,
    model_http: int | None = None,
    counting: str = "lua",
    edit: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ready: bool = True,
) -> Iterator[int]:
    """A second real Envoy, configured as the stack's (its extauthz, Redis and mutual TLS)
    but on free ports, in front of the model server on `model_http` (default: the demo
    server); `counting` and `edit` (a change to the config) as a test needs. Yields its
    external port, open and (`ready`) answering `GET /v1/models` for an llm token."""
    import dataclasses
    import urllib.request

    import yaml

    from extauthz.admin import tokens
    from extauthz.dev.envoy_config import Endpoint, render
    from extauthz.dev.ports import free_ports

    external, internal, admin, console = free_ports(4)
    ports = dataclasses.replace(
        stack.ports,
        external=Endpoint("127.0.0.1", external),
        internal=Endpoint("127.0.0.1", internal),
        admin=Endpoint("127.0.0.1", admin),
        console=Endpoint("127.0.0.1", console),
    )
    if model_http is not None:
        ports = dataclasses.replace(ports, model_http=Endpoint("127.0.0.1", model_http))
    config = yaml.safe_load(render(ports, stack.client_tls, counting=counting))
    if edit is not None:
        config = edit(config)
    path = work / "envoy.yaml"
    path.write_text(yaml.safe_dump(config))
    with open(work / "envoy.log", "wb") as log:
        envoy = subprocess.Popen(
            [require_binary("envoy"), "-c", str(path), "--use-dynamic-base-id",
             "--log-level", "warn"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for(lambda: port_open(external) or envoy.poll() is not None, 20, "the second Envoy")
        assert envoy.poll() is None, (work / "envoy.log").read_text()[-2000:]
        if ready:
            token = tokens.create(stack.store(), ["llm"], now=time.time()).token
            listing = urllib.request.Request(
                f"http://127.0.0.1:{external}/v1/models",
                headers={"authorization": f"Bearer {token}"},
            )

            def answers() -> bool:
                try:
                    with urllib.request.urlopen(listing, timeout=2) as response:
                        return bool(response.status == 200)
                except OSError:
                    return False

            wait_for(answers, 30, "Envoy → extauthz → the model server")
        yield external
    finally:
        stop(envoy)
