"""CLI mistakes: one line saying what is wrong and how to fix it, non-zero exit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from extauthz.dev.ports import free_port
from tests.support.procs import REPO, RedisServer, run_cli

pytestmark = pytest.mark.redis


def one_line_error(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("extauthz: error: ")
    return lines[0]


def test_usage_errors(redis_server: RedisServer, tmp_path: Path) -> None:
    url = redis_server.url
    cases = [
        (("token", "revoke", "nope"), "no token with id 'nope'"),
        (("token", "create"), "missing --route: a token needs at least one"),
        (("token", "create", "--route", "m", "--ttl", "soon"), "invalid --ttl 'soon'"),
        (("check", "--route", "m", "--header", "authorization Bearer x"), "has no colon"),
    ]
    for args, fragment in cases:
        result = run_cli(url, *args, check=False)
        assert result.returncode == 2, args
        assert fragment in one_line_error(result.stderr)
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nroutes:\n  m:\n    access: protected\n    credentials: [basic]\n")
    result = run_cli(url, "sync", str(bad), check=False)
    assert result.returncode == 2
    assert f"{bad}:3: routes.m.basic_username: required" in one_line_error(result.stderr)
    assert redis_server.cli("DBSIZE") == "0"


def test_redis_unreachable(tmp_path: Path) -> None:
    url = f"redis://:s3cret-pass@127.0.0.1:{free_port()}/0"
    result = run_cli(url, "token", "list", check=False)
    assert result.returncode == 1
    line = one_line_error(result.stderr)
    assert "cannot reach Redis at redis://:***@127.0.0.1" in line
    assert "s3cret-pass" not in line


def test_token_lifecycle_plain_output(redis_server: RedisServer) -> None:
    create = ("token", "create", "--route", "m", "--allow-unknown-route")  # (no policy here)
    out = run_cli(redis_server.url, *create, "--id", "ci-1", "--name", "ci").stdout
    token = out.strip().splitlines()[-1]
    assert token.startswith("eat_")
    shown = run_cli(redis_server.url, "token", "show", "ci-1").stdout
    assert "ci-1" in shown and token not in shown
    listed = run_cli(redis_server.url, "token", "list").stdout
    assert "ci-1" in listed and token not in listed
    assert "revoked ci-1" in run_cli(redis_server.url, "token", "revoke", "ci-1").stdout
    # the id counter and the audit log only
    assert sorted(redis_server.cli("KEYS", "*").split()) == ["extauthz:audit", "extauthz:token-seq"]
    events = [
        json.loads(line)
        for line in run_cli(redis_server.url, "audit", "--json").stdout.splitlines()
    ]
    assert [(e["action"], e["target"]) for e in events] == [
        ("token.create", "ci-1"),
        ("token.revoke", "ci-1"),
    ]
    assert events[0]["actor"].startswith("cli:") and token not in json.dumps(events)
    plain = run_cli(redis_server.url, "audit").stdout
    assert "token.revoke ci-1" in plain


def test_a_reader_that_stops_early_gets_no_traceback(redis_server: RedisServer) -> None:
    # `extauthz token list | head -1`, and the same for export
    pipe = redis.Redis.from_url(redis_server.url).pipeline()
    for i in range(2000):  # more than a pipe's buffer of output
        pipe.hset(f"extauthz:token-id:t{i}", "sha256", f"{i:064x}")
        pipe.hset(f"extauthz:token:{i:064x}", mapping={"id": f"t{i}", "routes": "m"})
        pipe.zadd("extauthz:token-ids", {f"t{i}": i + 1})
    pipe.execute()
    for command in (("token", "list"), ("token", "export")):
        proc = subprocess.Popen(
            [sys.executable, "-m", "extauthz", *command, "--redis-url", redis_server.url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=REPO,
        )
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline()
        proc.stdout.close()  # as head does
        assert proc.wait(timeout=30) == 141  # 128 + SIGPIPE, as other commands exit
        assert proc.stderr.read() == b""
