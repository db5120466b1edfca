"""The redis-cli blocks of docs/redis.md, run as written against a real redis-server."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.check import CheckClient
from tests.support.procs import (
    REPO,
    RedisServer,
    extauthz_serve,
    require_binary,
    run_cli,
    wait_for,
)
from tests.support.readme import readme_block

pytestmark = pytest.mark.redis


def run_block(redis_server: RedisServer, block: str, env: dict[str, str]) -> str:
    cli = require_binary("redis-cli")
    script = f'redis-cli() {{ "{cli}" -p {redis_server.port} "$@"; }}\nset -euo pipefail\n{block}'
    result = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_documented_redis_cli_commands(redis_server: RedisServer, tmp_path: Path) -> None:
    run_cli(
        redis_server.url,
        "sync",
        str(REPO / "examples/policy.yaml"),
        env={"DENSENET161_SECRET": "x" * 16},
    )
    with extauthz_serve(redis_server.url, tmp_path / "s.log") as (port, _):
        client = CheckClient(port)
        out = run_block(redis_server, readme_block("redis-cli-create"), {"PATH": "/usr/bin:/bin"})
        token = out.strip().splitlines()[-1]
        assert token.startswith("eat_") and len(token) >= 47
        digest = subprocess.run(
            ["sha256sum"], input=token, capture_output=True, text=True, check=True
        ).stdout.split()[0]

        resp = client.check("densenet161", f"Bearer {token}")
        assert resp.status.code == 0
        assert {h.header.key: h.header.value for h in resp.ok_response.headers}[
            "x-extauthz-subject"
        ] == "t1"
        assert client.status("densenet161-management", f"Bearer {token}") == 403
        # made by hand: unknown to the id index until reindex
        assert "t1" not in run_cli(redis_server.url, "token", "list").stdout
        shown = run_cli(redis_server.url, "token", "show", "t1", check=False)
        assert shown.returncode == 2 and "extauthz token reindex" in shown.stderr
        assert "1 added" in run_cli(redis_server.url, "token", "reindex").stdout
        listed = run_cli(redis_server.url, "token", "list").stdout
        assert "t1" in listed and token not in listed

        out = run_block(
            redis_server, readme_block("redis-cli-revoke"), {"PATH": "/usr/bin:/bin", "H": digest}
        )
        assert f"extauthz:token:{digest} t1" in out
        wait_for(lambda: client.status("densenet161", f"Bearer {token}") == 401, 1, "revocation")
        client.close()
