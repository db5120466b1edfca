"""The least-privilege Redis ACL users of docs/operations.md, on a real redis-server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from extauthz.core.credentials import token_hash
from tests.support.check import CheckClient
from tests.support.procs import REPO, RedisServer, extauthz_serve, live_servers, run_cli, wait_for
from tests.support.readme import readme_block

pytestmark = pytest.mark.redis


def test_documented_acl_users(tmp_path: Path) -> None:
    acl = tmp_path / "users.acl"
    acl.write_text("user default on nopass ~* &* +@all\n" + readme_block("redis-acl", lang=""))
    server = RedisServer(
        tmp_path, extra=("--aclfile", str(acl), "--notify-keyspace-events", "Kghxe")
    )
    server.start()
    try:
        admin = f"redis://extauthz-admin:CHANGE-ME-admin@127.0.0.1:{server.port}/0"
        reader = f"redis://extauthz-server:CHANGE-ME-server@127.0.0.1:{server.port}/0"
        run_cli(
            admin, "sync", str(REPO / "examples/policy.yaml"), env={"DENSENET161_SECRET": "x" * 16}
        )
        tok = json.loads(
            run_cli(admin, "token", "create", "--route", "deployment-a", "--json").stdout
        )

        denied = run_cli(reader, "token", "create", "--route", "deployment-a", check=False)
        assert denied.returncode == 1
        assert "Redis refused" in denied.stderr and "CHANGE-ME" not in denied.stderr

        log = tmp_path / "serve.log"
        with extauthz_serve(reader, log) as (port, _):
            client = CheckClient(port)
            bearer = f"Bearer {tok['token']}"
            wait_for(
                lambda: client.status("deployment-a", bearer) == 200,
                5,
                "allowed with the read-only user",
            )
            # subscribed with the ACL's channels, and registered (its one writable key)
            wait_for(lambda: live_servers(server) == "1", 5, "registered")
            result = run_cli(admin, "token", "revoke", tok["id"], "--json")
            assert json.loads(result.stdout)["unconfirmed"] == []  # the server acknowledged
            assert client.status("deployment-a", bearer) == 401  # at once: no waiting
            client.close()
        assert live_servers(server) == "0"  # it left on shutdown
        text = log.read_text()
        assert "invalidation channel subscribed" in text
        assert "failed" not in text and "Traceback" not in text
        assert "CHANGE-ME" not in text
    finally:
        server.stop()


def test_missing_channel_permission_degrades_safely(tmp_path: Path) -> None:
    acl = tmp_path / "users.acl"
    acl.write_text(
        "user default on nopass ~* &* +@all\n"
        "user narrow on >pw ~extauthz:* resetchannels -@all +@connection +hgetall +pttl +hget +hmget +subscribe +psubscribe +config|get\n"
    )
    server = RedisServer(tmp_path, extra=("--aclfile", str(acl)))
    server.start()
    try:
        run_cli(
            server.url,
            "sync",
            str(REPO / "examples/policy.yaml"),
            env={"DENSENET161_SECRET": "x" * 16},
        )
        tok = json.loads(
            run_cli(server.url, "token", "create", "--route", "deployment-a", "--json").stdout
        )
        narrow = f"redis://narrow:pw@127.0.0.1:{server.port}/0"
        log = tmp_path / "serve.log"
        with extauthz_serve(narrow, log) as (port, _):
            client = CheckClient(port)
            bearer = f"Bearer {tok['token']}"
            wait_for(
                lambda: client.status("deployment-a", bearer) == 200, 5, "served without the cache"
            )
            server.cli("DEL", f"extauthz:token:{token_hash(tok['token'])}")
            assert client.status("deployment-a", bearer) == 401  # no cache to be stale
            client.close()
        text = log.read_text()
        assert "needs the channels listed in docs/operations.md" in text
        assert "Traceback" not in text
    finally:
        server.stop()
