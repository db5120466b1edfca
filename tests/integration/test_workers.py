"""`extauthz serve --workers N`: SO_REUSEPORT workers, restart, shutdown, revocation in all."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import time
from functools import partial
from pathlib import Path

import pytest

from extauthz.dev.ports import free_port, free_ports_in_a_row, port_open
from tests.support.check import CheckClient
from tests.support.metrics import scrape
from tests.support.procs import (
    REPO,
    RedisServer,
    extauthz_serve,
    live_servers,
    run_cli,
    stop,
    wait_for,
)

pytestmark = pytest.mark.redis

ENV = {"DENSENET161_SECRET": "x" * 16}


def worker_pids(supervisor: int) -> set[int]:
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return {int(pid) for pid in children}


def test_workers_share_the_port_and_all_see_revocations(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    run_cli(redis_server.url, "sync", str(REPO / "examples/policy.yaml"), env=ENV)
    tok = json.loads(
        run_cli(redis_server.url, "token", "create", "--route", "deployment-a", "--json").stdout
    )
    bearer = f"Bearer {tok['token']}"
    log = tmp_path / "s.log"
    with extauthz_serve(redis_server.url, log, "--workers", "3") as (port, proc):
        wait_for(lambda: len(worker_pids(proc.pid)) == 3, 10, "3 workers")

        def listening() -> set[str]:  # the processes that said they listen
            lines = log.read_text().splitlines()
            return {line.split()[2] for line in lines if "listening on" in line}

        # three processes listen (before the clients connect: each worker gets some)
        wait_for(lambda: len(listening()) == 3, 20, "3 workers listening")
        # many connections: the kernel spreads them over the workers
        clients = [CheckClient(port) for _ in range(24)]
        wait_for(
            lambda: all(c.status("deployment-a", bearer) == 200 for c in clients), 10, "all warm"
        )
        time.sleep(0.5)  # every worker's invalidation channel is subscribed
        for c in clients:
            assert c.status("deployment-a", bearer) == 200

        run_cli(redis_server.url, "token", "revoke", tok["id"])
        started = time.monotonic()
        wait_for(
            lambda: all(c.status("deployment-a", bearer) == 401 for c in clients),
            1.0,
            "revoked everywhere",
        )
        assert time.monotonic() - started < 1.0

        # a worker that dies is replaced
        victim = next(iter(worker_pids(proc.pid)))
        os.kill(victim, signal.SIGKILL)
        wait_for(
            lambda: len(worker_pids(proc.pid)) == 3 and victim not in worker_pids(proc.pid),
            10,
            "restart",
        )
        fresh = CheckClient(port)
        wait_for(lambda: fresh.status("healthz") == 200, 5, "serving after restart")
        for c in [*clients, fresh]:
            c.close()
        pids = worker_pids(proc.pid)
        assert stop(proc) == 0  # SIGTERM forwarded, every worker stopped cleanly
        assert all(
            not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
            for pid in pids
        )


def test_busy_port_is_reported_by_the_supervisor(redis_server: RedisServer, tmp_path: Path) -> None:
    with extauthz_serve(redis_server.url, tmp_path / "a.log") as (port, _):
        result = run_cli(
            redis_server.url,
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--workers",
            "2",
            check=False,
        )
    assert result.returncode == 2
    assert "cannot listen on" in result.stderr.strip().splitlines()[-1]


def test_workers_that_keep_dying_stop_the_supervisor(redis_server: RedisServer) -> None:
    # worker 0 fails at every start (its own metrics port, the one after the supervisor's,
    # is taken): a crash loop, exit code 1
    metrics = free_ports_in_a_row(3)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", metrics + 1))
        taken.listen()
        result = run_cli(
            redis_server.url,
            "serve",
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--workers",
            "2",
            "--metrics-listen",
            f"127.0.0.1:{metrics}",
            check=False,
        )
    assert result.returncode == 1
    assert "workers keep dying" in result.stderr


def revocation_rounds(redis_server: RedisServer, port: int, rounds: int, confirm: float) -> int:
    """Threads keep asking with the current token while it is revoked in process; returns
    how many requests sent after `revoke` returned were still allowed."""
    from extauthz.admin import tokens
    from extauthz.storage.store import open_store

    store = open_store(redis_server.url, "extauthz:", 5.0)
    clients = [CheckClient(port) for _ in range(6)]
    state: dict[str, object] = {"bearer": None, "revoked_at": None, "stop": False}
    late_allows = [0]

    def hammer(client: CheckClient) -> None:
        while not state["stop"]:
            bearer, revoked_at = state["bearer"], state["revoked_at"]
            if bearer is None:
                time.sleep(0.0005)
                continue
            sent = time.monotonic()
            allowed = client.status("deployment-a", str(bearer)) == 200
            if allowed and isinstance(revoked_at, float) and sent > revoked_at:
                late_allows[0] += 1

    threads = [threading.Thread(target=hammer, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    try:
        for _ in range(rounds):
            issued = tokens.create(store, ["deployment-a"])
            state["revoked_at"] = None
            state["bearer"] = f"Bearer {issued.token}"
            time.sleep(0.01)  # cached and memoized in every worker
            tokens.revoke(store, issued.record.id, confirm=confirm)
            state["revoked_at"] = time.monotonic()
            time.sleep(0.005)
            state["bearer"] = None
    finally:
        state["stop"] = True
        for t in threads:
            t.join()
        for c in clients:
            c.close()
        store.close()
    return late_allows[0]


def test_a_confirmed_revoke_leaves_no_window(redis_server: RedisServer, tmp_path: Path) -> None:
    run_cli(redis_server.url, "sync", str(REPO / "examples/policy.yaml"), env=ENV)
    # every round ends in 401s from one client address: no failure limit here
    extra = ("--workers", "2", "--auth-failure-burst", "0")
    with extauthz_serve(redis_server.url, tmp_path / "s.log", *extra) as (port, proc):
        wait_for(lambda: len(worker_pids(proc.pid)) == 2, 10, "2 workers")
        wait_for(lambda: live_servers(redis_server) == "2", 5, "registered")
        # end to end, under load: no request sent after the revoke returned is allowed
        # (the mechanisms are tested one by one in test_token_cache.py and below)
        assert revocation_rounds(redis_server, port, 150, confirm=2.0) == 0


def test_revoke_names_a_server_that_does_not_confirm(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    run_cli(redis_server.url, "sync", str(REPO / "examples/policy.yaml"), env=ENV)
    with extauthz_serve(redis_server.url, tmp_path / "s.log") as (_port, proc):
        wait_for(lambda: live_servers(redis_server) == "1", 5, "registered")
        server_id = redis_server.cli("--scan", "--pattern", "extauthz:servers:*")[
            len("extauthz:servers:") :
        ]
        assert server_id == f"{socket.gethostname()}:{proc.pid}"
        for command in ("revoke", "rotate"):
            tok = json.loads(
                run_cli(
                    redis_server.url, "token", "create", "--route", "deployment-a", "--json"
                ).stdout
            )
            result = run_cli(redis_server.url, "token", command, tok["id"], "--json")
            # confirmed by the server; this Redis has no replica, which is all it says
            warnings = result.stderr.splitlines()
            assert result.returncode == 0 and all("no replica" in w for w in warnings), warnings
            tok = json.loads(
                run_cli(
                    redis_server.url, "token", "create", "--route", "deployment-a", "--json"
                ).stdout
            )
            os.kill(proc.pid, signal.SIGSTOP)  # hung: alive, registered, silent
            try:
                started = time.monotonic()
                result = run_cli(
                    redis_server.url, "token", command, tok["id"], "--ack-timeout", "1", check=False
                )
                took = time.monotonic() - started
            finally:
                os.kill(proc.pid, signal.SIGCONT)
            assert result.returncode == 4, result
            assert f"did not confirm within 1s: {server_id}" in result.stderr
            assert 1.0 <= took < 5
            assert run_cli(
                redis_server.url, "token", "show", tok["id"], check=False
            ).returncode == (2 if command == "revoke" else 0)
    # a server that stops leaves the registry
    assert live_servers(redis_server) == "0"


def healthz_allowed(text: str) -> float:
    m = re.search(
        r'extauthz_decisions_total\{outcome="allow",reason="public",route="healthz"\} (\S+)', text
    )
    return float(m.group(1)) if m else 0.0


def test_one_scrape_returns_the_totals_of_every_worker(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    run_cli(redis_server.url, "sync", str(REPO / "examples/policy.yaml"), env=ENV)
    metrics = free_ports_in_a_row(4)  # the supervisor's, then one per worker
    args = ("--workers", "3", "--metrics-listen", f"127.0.0.1:{metrics}")
    with extauthz_serve(redis_server.url, tmp_path / "s.log", *args) as (port, proc):
        wait_for(lambda: len(worker_pids(proc.pid)) == 3, 10, "3 workers")
        for worker in range(3):  # every worker up (its own metrics come before its gRPC)
            wait_for(partial(port_open, metrics + 1 + worker), 10, f"worker {worker}")
        clients = [CheckClient(port) for _ in range(12)]  # the kernel spreads connections
        wait_for(lambda: all(c.status("healthz") == 200 for c in clients), 10, "all ready")
        for client in clients:
            for _ in range(5):
                assert client.status("healthz") == 200
            client.close()
        own = [healthz_allowed(scrape(metrics + 1 + worker)) for worker in range(3)]
        total = scrape(metrics)
    assert sum(1 for n in own if n > 0) >= 2  # the load reached several workers
    assert healthz_allowed(total) == sum(own) >= 12 * 6
    assert "extauthz_workers_unscraped 0" in total


def test_the_failure_limit_is_per_server_not_per_worker(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """With 3 workers a client address still gets one burst in all (each worker holds its
    share), not three."""
    run_cli(redis_server.url, "sync", str(REPO / "examples/policy.yaml"), env=ENV)
    serve = ("--workers", "3", "--auth-failure-burst", "12", "--auth-failure-rate", "0.01")
    with extauthz_serve(redis_server.url, tmp_path / "s.log", *serve) as (port, proc):
        wait_for(lambda: len(worker_pids(proc.pid)) == 3, 10, "3 workers")
        clients = [CheckClient(port) for _ in range(24)]  # spread over the workers
        statuses = [
            c.status("deployment-a", f"Bearer eat_guess{i}x{j}")  # (each new: no memo)
            for i in range(4)
            for j, c in enumerate(clients)
        ]
        assert statuses.count(401) <= 12 and statuses.count(429) >= 96 - 12, statuses
        assert statuses.count(401) >= 4  # (the burst is there: split, not lost)
        for c in clients:
            c.close()
