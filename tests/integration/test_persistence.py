"""Data kept (docs/operating.md#backup-and-restore): a real redis-server run with the
shipped deployments' own flags keeps every token and the policy across an unclean restart,
and `extauthz sync --watch` keeps the policy published: after Redis comes back empty, after
the file changes, through a file that fails validation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from tests.support.check import CheckClient
from tests.support.procs import REPO, RedisServer, extauthz_serve, run_cli, stop, wait_for

pytestmark = pytest.mark.redis

ENV = {"DENSENET161_SECRET": "the-basic-secret-value"}
EXAMPLE = REPO / "examples/policy.yaml"


def _compose_redis_flags() -> list[str]:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    command: list[str] = compose["services"]["redis"]["command"]
    assert command[0] == "redis-server"
    return command[1:]


def _kubernetes_redis_flags() -> list[str]:
    docs = yaml.safe_load_all((REPO / "deploy/kubernetes/redis.yaml").read_text())
    (redis,) = [d for d in docs if d and d["kind"] == "StatefulSet"]
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    args: list[str] = container["args"]
    return args


def _everything(server: RedisServer) -> dict[bytes, object]:
    """Every key with its type, value and expiry, the servers' heartbeats aside."""
    r: Any = redis.Redis(port=server.port)
    read = {
        b"string": r.get,
        b"hash": r.hgetall,
        b"set": r.smembers,
        b"list": lambda k: r.lrange(k, 0, -1),
        b"zset": lambda k: r.zrange(k, 0, -1, withscores=True),
        b"stream": r.xrange,
    }
    found: dict[bytes, object] = {}
    for key in r.scan_iter(count=1000):
        if not key.startswith(b"extauthz:servers"):
            kind = r.type(key)
            found[key] = (kind, read[kind](key), r.expiretime(key))
    r.close()
    return found


@pytest.mark.parametrize("shipped", ["compose", "kubernetes"])
def test_a_restarted_redis_keeps_every_token_and_route(tmp_path: Path, shipped: str) -> None:
    flags = _compose_redis_flags() if shipped == "compose" else _kubernetes_redis_flags()
    server = RedisServer(tmp_path, extra=tuple(flags))
    server.start()
    try:
        url = server.url
        run_cli(url, "sync", str(EXAMPLE), env=ENV)
        made = [
            json.loads(run_cli(url, "token", "create", *args, "--json").stdout)
            for args in (
                ("--route", "densenet161", "--scope", "inference", "--ttl", "1d"),
                ("--route", "deployment-a", "--rate-limit", "100/m", "--name", "kept"),
                ("--route", "llm", "--model", "demo-small", "--token-limit", "1000/d"),
            )
        ]
        run_cli(url, "token", "revoke", made[1]["id"])
        before = _everything(server)
        assert len(before) >= 5 and b"extauthz:policy" in before
        # an unclean stop: what Redis acknowledged is in the append-only file already
        assert server.proc is not None
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait()
        server.proc = None
        server.start()
        assert _everything(server) == before

        with extauthz_serve(url, tmp_path / "serve.log") as (port, _):
            client = CheckClient(port)
            try:
                token = f"Bearer {made[0]['token']}"
                wait_for(lambda: client.status("densenet161", token) == 200, 5, "allowed")
                assert client.status("deployment-a", f"Bearer {made[1]['token']}") == 401
                assert client.status("nope", token) == 404
            finally:
                client.close()
    finally:
        server.stop()


def _published(server: RedisServer) -> dict[str, object]:
    text = server.cli("HGET", "extauthz:policy", "snapshot")
    return json.loads(text) if text else {}


def _routes(server: RedisServer) -> set[str]:
    routes = _published(server).get("routes", {})
    assert isinstance(routes, dict)
    return set(routes)


def _replace(path: Path, text: str) -> None:
    """As an editor or the kubelet does: a new file renamed over the old one."""
    new = path.with_suffix(".new")
    new.write_text(text)
    os.replace(new, path)


def _with_route(line: str) -> str:
    """The example policy with one more route (its routes end where its secrets begin)."""
    text = EXAMPLE.read_text()
    assert text.count("\nsecrets:\n") == 1
    return text.replace("\nsecrets:\n", f"\n  {line}\nsecrets:\n")


def test_sync_watch_keeps_the_file_published(redis_server: RedisServer, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(EXAMPLE.read_text())
    log = tmp_path / "watch.log"
    url = redis_server.url
    command = [sys.executable, "-m", "extauthz", "sync", str(policy), "--watch", "--prune"]
    with open(log, "wb") as out:
        watcher = subprocess.Popen(
            [*command, "--interval", "0.2", "--redis-url", url],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, **ENV},
        )
    try:
        example = {"densenet161", "llm", "healthz"}
        wait_for(lambda: example <= _routes(redis_server), 20, "the first sync")
        assert run_cli(url, "sync", str(policy), "--check", "--prune", env=ENV).returncode == 0

        # Redis comes back empty (a restart without persistence, FLUSHALL): published again
        redis_server.cli("FLUSHALL")
        wait_for(lambda: example <= _routes(redis_server), 5, "the policy published again")

        # the file changes
        _replace(policy, _with_route("added-later: {access: public}"))
        wait_for(lambda: "added-later" in _routes(redis_server), 5, "the edit published")
        version = redis_server.cli("HGET", "extauthz:policy", "version")

        # a file that fails validation: said once, with file, line and key; nothing changes
        _replace(policy, _with_route("broken: {access: sometimes}"))
        wait_for(lambda: "routes.broken.access" in log.read_text(), 5, "the error logged")
        time.sleep(1)
        assert redis_server.cli("HGET", "extauthz:policy", "version") == version
        assert log.read_text().count("routes.broken.access") == 1
        assert watcher.poll() is None
        checked = run_cli(url, "sync", str(policy), "--check", env=ENV, check=False)
        assert checked.returncode == 2 and "routes.broken.access" in checked.stderr

        # someone publishes another file by hand: the watcher's file wins again
        _replace(policy, EXAMPLE.read_text())
        wait_for(lambda: "added-later" not in _routes(redis_server), 5, "the fix published")
        other = tmp_path / "other.yaml"
        other.write_text("version: 1\nroutes:\n  other: {access: public}\n")
        run_cli(url, "sync", str(other), "--prune")
        wait_for(lambda: "other" not in _routes(redis_server), 5, "the file published again")
        assert example <= _routes(redis_server)

        # Redis goes away and comes back empty on the same port
        redis_server.stop()
        time.sleep(0.6)
        redis_server.start()
        wait_for(lambda: example <= _routes(redis_server), 10, "published after Redis came back")
        assert "cannot sync" in log.read_text()
        assert "in sync again" in log.read_text()
        assert ENV["DENSENET161_SECRET"] not in log.read_text()
    finally:
        assert stop(watcher, timeout=5) == 0, log.read_text()


def test_sync_check_says_whether_redis_holds_the_file(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    url = redis_server.url

    def check(*flags: str) -> int:
        result = run_cli(url, "sync", str(EXAMPLE), "--check", *flags, env=ENV, check=False)
        assert (result.returncode == 1) == ("differs" in result.stdout), result.stdout
        return result.returncode

    assert check() == 1  # (nothing published)
    assert redis_server.cli("EXISTS", "extauthz:policy") == "0"  # (and --check wrote nothing)
    run_cli(url, "sync", str(EXAMPLE), env=ENV)
    assert check() == 0 and check("--prune") == 0
    other = tmp_path / "other.yaml"
    other.write_text(_with_route("other: {access: public}"))
    run_cli(url, "sync", str(other), env=ENV)  # (one route more than the example)
    assert check() == 0  # (without --prune a route the file lacks is kept: no change)
    assert check("--prune") == 1
    assert "other" in _routes(redis_server)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--watch", "--check"), "--watch publishes"),
        (("--watch", "--dry-run"), "--watch publishes"),
        (("--watch", "--interval", "0"), "--interval 0: give seconds"),
        (("--watch", "--interval", "nan"), "--interval nan: give seconds"),
    ],
)
def test_watch_mistakes_are_one_line(
    redis_server: RedisServer, flags: tuple[str, ...], message: str
) -> None:
    result = run_cli(redis_server.url, "sync", str(EXAMPLE), *flags, env=ENV, check=False)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
