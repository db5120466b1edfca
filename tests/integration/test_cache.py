"""The warm path: cached token records, invalidation by keyspace notifications, fail closed."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from extauthz.core.credentials import token_hash
from extauthz.storage.token_cache import NEGATIVE_TTL
from tests.support.check import CheckClient
from tests.support.procs import REPO, RedisServer, extauthz_serve, live_servers, run_cli, wait_for

pytestmark = pytest.mark.redis

ENV = {"DENSENET161_SECRET": "x" * 16}


def hgetall_calls(redis_server: RedisServer) -> int:
    for line in redis_server.cli("INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_hgetall:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


def token(redis_server: RedisServer, *args: str) -> dict[str, str]:
    out = run_cli(redis_server.url, "token", "create", *args, "--json").stdout
    result: dict[str, str] = json.loads(out)
    return result


@pytest.fixture
def served(redis_server: RedisServer, tmp_path: Path) -> Iterator[tuple[RedisServer, CheckClient]]:
    run_cli(redis_server.url, "sync", str(REPO / "examples/policy.yaml"), env=ENV)
    # a long policy poll: only the invalidation channel can make changes show up fast
    with extauthz_serve(redis_server.url, tmp_path / "s.log", "--policy-refresh", "30") as (
        port,
        _,
    ):
        client = CheckClient(port)
        wait_for(lambda: client.status("healthz") == 200, 5, "server ready")
        # the cache is trusted once the invalidation channel is subscribed (the server then
        # registers as live); until then every lookup reads Redis
        wait_for(lambda: live_servers(redis_server) == "1", 10, "the channel subscribed")
        yield redis_server, client
        client.close()


def test_warm_decisions_do_not_touch_redis(served: tuple[RedisServer, CheckClient]) -> None:
    redis_server, client = served
    tok = token(redis_server, "--route", "deployment-a")
    bearer = f"Bearer {tok['token']}"
    assert client.status("deployment-a", bearer) == 200
    before = hgetall_calls(redis_server)
    started = time.monotonic()
    for _ in range(300):
        assert client.status("deployment-a", bearer) == 200
        assert client.status("deployment-a", "Bearer eat_the-same-unknown-token") == 401
    # the unknown token's fetches: one, and one more per NEGATIVE_TTL (how long the cache
    # keeps an unknown token) that the loop took on a loaded machine
    unknown_fetches = 1 + int((time.monotonic() - started) // NEGATIVE_TTL)
    assert hgetall_calls(redis_server) - before <= unknown_fetches


@pytest.mark.parametrize(
    "how", ["cli revoke", "redis-cli DEL", "redis-cli HSET routes", "redis-cli EXPIRE"]
)
def test_changes_reach_the_cache_within_a_second(
    served: tuple[RedisServer, CheckClient], how: str
) -> None:
    redis_server, client = served
    tok = token(redis_server, "--route", "deployment-a")
    bearer = f"Bearer {tok['token']}"
    key = f"extauthz:token:{token_hash(tok['token'])}"
    for _ in range(3):
        assert client.status("deployment-a", bearer) == 200  # cached now
    expected = 401
    if how == "cli revoke":
        run_cli(redis_server.url, "token", "revoke", tok["id"])
    elif how == "redis-cli DEL":
        redis_server.cli("DEL", key)
    elif how == "redis-cli HSET routes":
        redis_server.cli("HSET", key, "routes", "deployment-b")
        expected = 403
    else:
        redis_server.cli("PEXPIRE", key, "1")
    # from the moment the command that made the change has returned (how long a process
    # takes to start on a loaded machine is no part of it)
    started = time.monotonic()
    wait_for(lambda: client.status("deployment-a", bearer) == expected, 1.0, how)
    assert time.monotonic() - started < 1.0


def test_policy_change_while_cached(
    served: tuple[RedisServer, CheckClient], tmp_path: Path
) -> None:
    redis_server, client = served
    tok = token(redis_server, "--route", "deployment-a")
    assert client.status("deployment-a", f"Bearer {tok['token']}") == 200
    private = tmp_path / "p.yaml"
    private.write_text("version: 1\nroutes:\n  deployment-a: {access: private}\n")
    run_cli(redis_server.url, "sync", str(private))
    wait_for(
        lambda: client.status("deployment-a", f"Bearer {tok['token']}") == 404,
        1.0,
        "route made private",
    )


def test_expiry_crossing_while_cached(served: tuple[RedisServer, CheckClient]) -> None:
    redis_server, client = served
    secret = "eat_expiry-crossing-while-cached-000000000000000"
    key = f"extauthz:token:{token_hash(secret)}"
    # no key TTL: only the record's expires_at says it is over
    redis_server.cli(
        "HSET", key, "id", "soon", "routes", "deployment-a", "expires_at", str(int(time.time()) + 2)
    )
    time.sleep(0.1)
    before = hgetall_calls(redis_server)
    wait_for(lambda: client.status("deployment-a", f"Bearer {secret}") == 401, 4, "expiry")
    assert hgetall_calls(redis_server) - before <= 1  # decided from the cached record


def test_redis_down_with_cached_entries_fails_closed(
    served: tuple[RedisServer, CheckClient],
) -> None:
    redis_server, client = served
    tok = token(redis_server, "--route", "deployment-a")
    bearer = f"Bearer {tok['token']}"
    assert client.status("deployment-a", bearer) == 200
    redis_server.stop()
    wait_for(lambda: client.status("deployment-a", bearer) == 503, 1.0, "fail closed")
    for _ in range(20):
        assert client.status("deployment-a", bearer) == 503
    redis_server.start()
    # empty data set after the restart: the token is gone, and nothing stale is served
    wait_for(lambda: client.status("deployment-a", bearer) == 401, 5, "recovery")


def test_stale_grace_is_bounded(redis_server: RedisServer, tmp_path: Path) -> None:
    run_cli(redis_server.url, "sync", str(REPO / "examples/policy.yaml"), env=ENV)
    tok = token(redis_server, "--route", "deployment-a")
    bearer = f"Bearer {tok['token']}"
    with extauthz_serve(redis_server.url, tmp_path / "s.log", "--stale-grace", "2") as (port, _):
        client = CheckClient(port)
        wait_for(lambda: live_servers(redis_server) == "1", 10, "the channel subscribed")
        wait_for(lambda: client.status("deployment-a", bearer) == 200, 5, "warm")
        assert client.status("deployment-a", bearer) == 200
        redis_server.stop()
        stopped = time.monotonic()
        assert client.status("deployment-a", bearer) == 200  # within the grace
        wait_for(lambda: client.status("deployment-a", bearer) == 503, 4, "end of grace")
        assert time.monotonic() - stopped >= 1.5
        client.close()


def test_without_keyspace_notifications(tmp_path: Path) -> None:
    # a managed Redis that refuses CONFIG: explicit messages and a short cache lifetime
    server = RedisServer(tmp_path, extra=("--rename-command", "CONFIG", ""))
    server.start()
    try:
        run_cli(server.url, "sync", str(REPO / "examples/policy.yaml"), env=ENV)
        tok = token(server, "--route", "deployment-a")
        bearer = f"Bearer {tok['token']}"
        with extauthz_serve(server.url, tmp_path / "s.log") as (port, _):
            client = CheckClient(port)
            wait_for(lambda: client.status("deployment-a", bearer) == 200, 5, "warm")
            server.cli("DEL", f"extauthz:token:{token_hash(tok['token'])}")
            wait_for(lambda: client.status("deployment-a", bearer) == 401, 1.0, "fallback ttl")
            client.close()
        assert "cannot enable keyspace notifications" in (tmp_path / "s.log").read_text()
    finally:
        server.stop()


def test_a_cached_record_never_outlives_its_keys_ttl(tmp_path: Path) -> None:
    # Redis deletes an expired key only when it gets round to it (lazily, or by sampling):
    # with active expiry off it never does while nobody reads the key. The cached record
    # must stop working at the TTL all the same.
    server = RedisServer(
        tmp_path, extra=("--notify-keyspace-events", "Kgx", "--enable-debug-command", "yes")
    )
    server.start()
    try:
        run_cli(server.url, "sync", str(REPO / "examples/policy.yaml"), env=ENV)
        with extauthz_serve(server.url, tmp_path / "s.log", "--policy-refresh", "30") as (port, _):
            client = CheckClient(port)
            wait_for(lambda: client.status("healthz") == 200, 5, "server ready")
            wait_for(lambda: live_servers(server) == "1", 10, "the channel subscribed")
            for ttl_command in ("PEXPIRE", "PEXPIREAT"):
                secret = f"eat_hand-made-{ttl_command}"
                key = f"extauthz:token:{token_hash(secret)}"
                server.cli("HSET", key, "id", "hand", "routes", "deployment-a")  # no expires_at
                bearer = f"Bearer {secret}"
                assert client.status("deployment-a", bearer) == 200  # cached now
                server.cli("DEBUG", "SET-ACTIVE-EXPIRE", "0")
                deadline_ms = 1500 if ttl_command == "PEXPIRE" else int(time.time() * 1000) + 1500
                server.cli(ttl_command, key, str(deadline_ms))
                assert client.status("deployment-a", bearer) == 200
                started = time.monotonic()

                def refused(bearer: str = bearer) -> bool:
                    return client.status("deployment-a", bearer) == 401

                wait_for(refused, 3, "the TTL to end")
                assert time.monotonic() - started < 2.0

                # (the cache's deadline is counted from before Redis answered PTTL, so it may
                # refuse a moment before Redis's own clock reaches the TTL; a read after it
                # deletes the key, lazily)
                def gone(key: str = key) -> bool:
                    return server.cli("EXISTS", key) == "0"

                wait_for(gone, 1, "Redis to expire the key")
                server.cli("DEBUG", "SET-ACTIVE-EXPIRE", "1")
            client.close()
    finally:
        server.stop()
