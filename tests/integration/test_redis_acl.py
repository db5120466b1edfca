"""The least-privilege Redis ACL users of docs/operations.md, on a real redis-server."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from extauthz.core.credentials import token_hash
from extauthz.runtime.tickets import Tickets
from extauthz.storage.store import open_store
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
        limited = json.loads(
            run_cli(
                admin, "token", "create", "--route", "deployment-a", "--rate-limit", "2/h",
                "--json",
            ).stdout
        )  # fmt: skip
        # a team, and a token in it, written with the admin user (the servers read them)
        server.cli("HSET", "extauthz:team:acme", "id", "acme", "name", "Acme")
        teamed = json.loads(
            run_cli(admin, "token", "create", "--route", "deployment-a", "--json").stdout
        )
        server.cli("HSET", f"extauthz:token:{token_hash(teamed['token'])}", "team", "acme")

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
            # the limit counters: requests leased (and given back past the limit: DECRBY)
            two = f"Bearer {limited['token']}"
            assert [client.status("deployment-a", two) for _ in range(3)] == [200, 200, 429]
            # LLM token budgets, leased the same way with the server's user
            store = open_store(reader, "extauthz:", 2.0)
            assert store.take_units("tl:token:x:m1", 5, 3, time.time() + 60) == (3, 3)
            assert store.take_units("bl:token:x:m1", 5, 3, time.time() + 60) == (3, 3)
            # the key that signs LLM tickets: made and read with the server's user; and the
            # records counted, claimed once
            tickets = Tickets(store)
            ticket = tickets.sign("x", "llm", "m", "") or ""
            assert ticket.startswith("v2:")
            record = tickets.verified("x", "llm", "m", "", ticket)
            assert record is not None and tickets.claim([record, record]) == [True, False]
            # a team read, and a change to it seen through the team key's notifications
            in_team = f"Bearer {teamed['token']}"
            assert client.status("deployment-a", in_team) == 200
            server.cli("DEL", "extauthz:team:acme")
            wait_for(lambda: client.status("deployment-a", in_team) == 403, 2, "team gone")
            result = run_cli(admin, "token", "revoke", tok["id"], "--json")
            assert json.loads(result.stdout)["unconfirmed"] == []  # the server acknowledged
            assert client.status("deployment-a", bearer) == 401  # at once: no waiting
            client.close()
        assert live_servers(server) == "0"  # it left on shutdown
        # the usage it counted was written on shutdown (MULTI/EXEC batches)
        day = time.strftime("%Y-%m-%d", time.gmtime())
        assert server.cli("HGET", f"extauthz:usage:{day}", f"a:{limited['id']}") == "2"
        text = log.read_text()
        assert "invalidation channel subscribed" in text
        assert "failed" not in text and "Traceback" not in text
        assert "refused" not in text and "not written" not in text
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
