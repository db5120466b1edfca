"""Token lifecycle at scale, end to end: the real CLI, a real redis-server, real Check calls."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from extauthz.core.credentials import token_hash
from tests.support.check import CheckClient
from tests.support.procs import REPO, RedisServer, extauthz_serve, run_cli, wait_for
from tests.support.readme import readme_block

pytestmark = pytest.mark.redis

ENV = {"DENSENET161_SECRET": "x" * 16}


def _sync(url: str) -> None:
    run_cli(url, "sync", str(REPO / "examples/policy.yaml"), env=ENV)


def _create(url: str, *args: str) -> dict[str, str]:
    out = run_cli(url, "token", "create", *args, "--json").stdout
    created: dict[str, str] = json.loads(out)
    return created


@pytest.fixture
def client(redis_server: RedisServer, tmp_path: Path) -> Iterator[CheckClient]:
    """A running server on the example policy, ready, and a Check client for it."""
    _sync(redis_server.url)
    with extauthz_serve(redis_server.url, tmp_path / "s.log") as (port, _):
        check = CheckClient(port)
        wait_for(lambda: check.status("healthz") == 200, 5, "server ready")
        yield check
        check.close()


def test_rotate_with_grace_both_sides_of_the_boundary(
    redis_server: RedisServer, client: CheckClient
) -> None:
    url = redis_server.url
    tok = _create(url, "--route", "deployment-a", "--ttl", "1h", "--id", "graced")
    old = f"Bearer {tok['token']}"
    wait_for(lambda: client.status("deployment-a", old) == 200, 2, "token allowed")
    started = time.time()
    rotated = json.loads(
        run_cli(url, "token", "rotate", "graced", "--grace", "3s", "--json").stdout
    )
    # the grace ends where the command set it: 3 s after it ran, rounded up
    grace_end = int(
        redis_server.cli("HGET", f"extauthz:token:{token_hash(tok['token'])}", "expires_at")
    )
    assert math.ceil(started + 3) <= grace_end <= math.ceil(time.time() + 3)
    new = f"Bearer {rotated['token']}"
    assert client.status("deployment-a", new) == 200  # at once
    # the old secret: allowed until the grace ends (cached and read afresh alike)...
    while time.time() < grace_end - 0.3:
        assert client.status("deployment-a", old) == 200
        time.sleep(0.05)
    # ...refused from the end on (within the 1 s bound), while the new one still works
    wait_for(lambda: client.status("deployment-a", old) == 401, 1.3, "grace over")
    assert time.time() >= grace_end - 0.3
    assert client.status("deployment-a", new) == 200
    shown = json.loads(run_cli(url, "token", "show", "graced", "--json").stdout)
    assert shown["expires_at"] == tok["expires_at"]  # the record lives on, with the new secret


def test_rotate_without_grace_and_update_are_live_when_the_command_returns(
    redis_server: RedisServer, client: CheckClient
) -> None:
    url = redis_server.url
    wait_for(lambda: redis_server.cli("SCARD", "extauthz:servers") == "1", 5, "registered")
    tok = _create(url, "--route", "deployment-a", "--id", "moving")
    bearer = f"Bearer {tok['token']}"
    wait_for(lambda: client.status("deployment-a", bearer) == 200, 2, "token allowed")
    assert client.status("deployment-b", bearer) == 403
    updated = run_cli(url, "token", "update", "moving", "--route", "deployment-b", "--json")
    assert json.loads(updated.stdout)["routes"] == ["deployment-b"]
    # the command returned after every live server confirmed: no wait needed
    assert client.status("deployment-a", bearer) == 403
    assert client.status("deployment-b", bearer) == 200
    new = json.loads(run_cli(url, "token", "rotate", "moving", "--json").stdout)["token"]
    assert client.status("deployment-b", bearer) == 401
    assert client.status("deployment-b", f"Bearer {new}") == 200
    run_cli(url, "token", "revoke", "moving")
    assert client.status("deployment-b", f"Bearer {new}") == 401


def test_torchserve_keys_migrate_with_the_readme_commands(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    url = redis_server.url
    _sync(url)
    soon = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(time.time() + 3600))
    key_file = {
        "management": {"key": "aadJv_R6", "expiration time": soon},
        "inference": {"key": "poZXAlqe", "expiration time": soon},
        "API": {"key": "xryL_Vzs"},
    }
    (tmp_path / "key_file.json").write_text(json.dumps(key_file))
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "EXTAUTHZ_REDIS_URL": url,
        "HOME": str(tmp_path),
        "PYTHONPATH": str(REPO),  # this checkout's code, whichever one the venv installed
    }

    def run_block() -> str:
        script = "set -euo pipefail\n" + readme_block("torchserve-import")
        result = subprocess.run(
            ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert "2 new" in run_block()
    assert "0 new, 0 updated, 0 replaced; 2 unchanged" in run_block()
    with extauthz_serve(url, tmp_path / "s.log") as (port, _):
        client = CheckClient(port)
        wait_for(lambda: client.status("healthz") == 200, 5, "server ready")
        assert client.status("densenet161", "Bearer poZXAlqe") == 200
        assert client.status("densenet161-management", "Bearer poZXAlqe") == 403
        assert client.status("densenet161-management", "Bearer aadJv_R6") == 200
        assert client.status("densenet161", "Bearer xryL_Vzs") == 401  # not migrated
        client.close()
    exported = run_cli(url, "token", "export").stdout
    assert "poZXAlqe" not in exported and "aadJv_R6" not in exported
    assert [json.loads(line)["id"] for line in exported.splitlines()] == [
        "ts-inference",
        "ts-management",
    ]


def test_bad_input_is_one_line_and_changes_nothing(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    url = redis_server.url
    _sync(url)
    _create(url, "--route", "deployment-a", "--ttl", "1h", "--id", "short")
    before = redis_server.cli("DEBUG", "DIGEST")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x1", "routes": ["deployment-a"], "token": "aaaaaaaaaa"}\n{oops\n')
    typo = tmp_path / "typo.jsonl"
    typo.write_text('{"id": "x1", "routes": ["deploymnet-a"], "token": "aaaaaaaaaa"}\n')
    unknown = "is not a route of the synced policy (version 1; did you mean deployment-a?): fix"
    allow = "or pass --allow-unknown-route if its policy comes later"
    llm_only = (
        "token limits, budgets and models apply only on LLM routes (api: openai in the policy)"
    )
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    cases = [
        (("token", "import", str(bad)), f"{bad}:2: not JSON"),
        (("token", "import", str(fifo)), "not a regular file"),
        (("token", "rotate", "short", "--grace", "2h"), "longer than the token's remaining life"),
        (("token", "rotate", "short", "--grace", "soon"), "invalid --grace 'soon'"),
        (("token", "update", "short", "--ttl", "1h", "--no-expiry"), "not both"),
        (("token", "update", "nobody", "--name", "x"), "extauthz token reindex"),
        (("token", "list", "--limit", "-1"), "invalid --limit '-1'"),
        (("token", "create", "--route", "deployment-a", "--id", "short"), "already exists"),
        (("token", "create", "--route", "deployment-a", "--rate-limit", "9" * 20 + "/s"), "N/UNIT"),
        (("token", "usage", "short", "--days", "0"), "invalid --days '0'"),
        (("token", "usage", "short", "--days", "99999999999"), "invalid --days"),
        (("audit", "--limit", "0"), "invalid --limit '0'"),
        # mistakes refused, not warned: a typo in a route, LLM fields where they count nothing
        (
            ("token", "create", "--route", "deploymnet-a"),
            f"deploymnet-a {unknown} the name, {allow}",
        ),
        (("token", "update", "short", "--route", "deploymnet-a"), f"{unknown} the name, {allow}"),
        (("token", "import", str(typo)), f"{typo}:1: routes: deploymnet-a {unknown}"),
        (("token", "create", "--route", "deployment-a", "--token-limit", "9/d"), llm_only),
        (("token", "create", "--route", "deployment-a", "--model", "demo-small"), llm_only),
        (("token", "update", "short", "--token-limit", "9/d"), "invalid --token-limit '9/d'"),
        (("token", "create", "--route", "llm", "--token-limit", "0/d"), "it does not mean no"),
    ]
    for args, fragment in cases:
        result = run_cli(url, *args, check=False)
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("extauthz: error: "), result.stderr
        assert fragment in lines[0], (fragment, lines[0])
    assert redis_server.cli("DEBUG", "DIGEST") == before
    # a route whose policy comes later: allowed when asked for, with a warning
    later = ("--route", "later", "--allow-unknown-route", "--token-limit", "9/d", "--json")
    warned = run_cli(url, "token", "create", *later)
    assert warned.stderr.splitlines() == [
        "extauthz: warning: route later is not in the synced policy (a token for it answers "
        "404 until it is)",
        "extauthz: warning: its token limit and models take effect only on LLM routes (api: "
        "openai), and none of its routes is one yet: they do once later is one",
    ]
    imported = run_cli(url, "token", "import", str(typo), "--allow-unknown-route")
    assert "1 new" in imported.stdout
    assert "route deploymnet-a (1 tokens) is not in the synced policy" in imported.stderr


def test_the_documented_unknown_route_block(redis_server: RedisServer, tmp_path: Path) -> None:
    url = redis_server.url
    _sync(url)
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "EXTAUTHZ_REDIS_URL": url,
        "HOME": str(tmp_path),
        "PYTHONPATH": str(REPO),  # this checkout's code, whichever one the venv installed
    }
    script = "set -euo pipefail\n" + readme_block("unknown-route")
    result = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    refused, token = result.stdout.splitlines()
    assert refused == "exit 2" and token.startswith("eat_")
    assert result.stderr.splitlines() == [
        "extauthz: error: deploymnet-a is not a route of the synced policy (version 1; did you "
        "mean deployment-a?): fix the name, or pass --allow-unknown-route if its policy comes "
        "later",
        "extauthz: warning: route later is not in the synced policy (a token for it answers 404 "
        "until it is)",
    ]
