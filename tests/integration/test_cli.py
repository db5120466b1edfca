"""CLI mistakes: one line saying what is wrong and how to fix it, non-zero exit."""

from __future__ import annotations

import json
import socket
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
        # no policy synced: a named route is refused (`*` names none), and so are LLM fields
        (
            ("token", "create", "--route", "m"),
            "m is not a known route: no policy has been synced yet: run `extauthz sync "
            "POLICY.yaml` first, or pass --allow-unknown-route if its policy comes later",
        ),
        (("token", "create", "--route", "*", "--model", "x"), "invalid --model 'x': token limits"),
        (("token", "create", "--route", "m", "--rate-limit", "0/s"), "invalid --rate-limit '0/s'"),
    ]
    for args, fragment in cases:  # (as processes: what a user's shell sees)
        result = run_cli(url, *args, check=False, process=True)
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
    result = run_cli(url, "token", "list", check=False, process=True)
    assert result.returncode == 1 and result.stdout == ""  # not even the header
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


CHECK_POLICY = """
version: 1
routes:
  open: {access: public}
  m: {access: protected}
"""


def test_check_exits_0_allowed_3_denied_1_not_decided(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    url = redis_server.url
    undecided = run_cli(url, "check", "--route", "m", check=False)  # no policy yet
    assert undecided.returncode == 1 and json.loads(undecided.stdout)["status"] == 503
    assert "not decided (no_policy): no policy has been synced yet: run `extauthz sync" in (
        one_line_error(undecided.stderr)
    )
    policy = tmp_path / "policy.yaml"
    policy.write_text(CHECK_POLICY)
    run_cli(url, "sync", str(policy))
    token = json.loads(run_cli(url, "token", "create", "--route", "m", "--json").stdout)["token"]
    bearer = ("--header", f"authorization: Bearer {token}")
    for args, code, status in (
        (("--route", "open"), 0, 200),
        (("--route", "m", *bearer), 0, 200),
        (("--route", "m"), 3, 401),
        (("--route", "m", "--header", "authorization: Bearer eat_nope"), 3, 401),
        (("--route", "nope", *bearer), 3, 404),
    ):
        result = run_cli(url, "check", *args, check=False)
        assert (result.returncode, json.loads(result.stdout)["status"]) == (code, status), args
        assert result.stderr == ""
    assert "0 allowed; 3 denied" in run_cli(url, "check", "--help").stdout


def test_admin_on_a_busy_port_is_one_line_and_exit_2(redis_server: RedisServer) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(
            redis_server.url, "admin", "--admin-listen", f"127.0.0.1:{port}", check=False
        )
    assert result.returncode == 2 and result.stdout == ""
    assert one_line_error(result.stderr) == (
        f"extauthz: error: cannot listen on 127.0.0.1:{port} (Address already in use): stop "
        "what holds it, or give --admin-listen another host:port"
    )


def test_team_commands(redis_server: RedisServer) -> None:
    """`extauthz team …` against a real redis-server: made, shown, listed, changed, used,
    deleted; each mistake one line and exit 2."""
    url = redis_server.url
    run_cli(url, "sync", str(REPO / "examples/policy.yaml"), env={"DENSENET161_SECRET": "x" * 16})
    made = json.loads(
        run_cli(url, "team", "create", "acme", "--name", "Acme", "--model", "demo-small",
                "--rate-limit", "100/m", "--token-limit", "5000/d", "--json").stdout
    )  # fmt: skip
    assert (made["models"], made["rate_limit"], made["token_limit"]) == (
        ["demo-small"], "100/m", "5000/d"
    )  # fmt: skip
    token = json.loads(
        run_cli(url, "token", "create", "--route", "llm", "--team", "acme", "--json").stdout
    )
    assert token["team"] == "acme"
    shown = json.loads(run_cli(url, "team", "show", "acme", "--json").stdout)
    assert shown["tokens"] == 1
    assert "acme" in run_cli(url, "team", "list").stdout
    changed = json.loads(
        run_cli(url, "team", "update", "acme", "--model", "none", "--rate-limit", "none",
                "--json").stdout
    )  # fmt: skip
    assert changed["models"] is None and changed["rate_limit"] is None
    usage = json.loads(run_cli(url, "team", "usage", "acme", "--days", "2", "--json").stdout)
    assert usage["tokens"] == 1 and len(usage["days"]) == 2
    for args, says in (
        (("team", "create", "acme"), "already exists"),
        (("team", "create", "Not An Id"), "invalid --team"),
        (("team", "show", "nope"), "no team with id 'nope' (see `extauthz team list`"),
        (("team", "delete", "acme"), "still has 1 token: revoke them, move them"),
        (("team", "usage", "acme", "--days", "0"), "invalid --days"),
        (("token", "create", "--route", "llm", "--team", "nope"), "no team with id 'nope'"),
        (("token", "create", "--route", "*", "--scope", "admin", "--model", "m"),
         "a management token takes no --model"),
    ):  # fmt: skip
        result = run_cli(url, *args, check=False)
        assert result.returncode == 2, (args, result)
        assert result.stderr.count("\n") == 1 and says in result.stderr, (args, result.stderr)
    assert "deleted team acme" in run_cli(url, "team", "delete", "acme", "--revoke-tokens").stdout
    assert run_cli(url, "token", "show", token["id"], check=False).returncode == 2
