"""Redis over TLS, behind Sentinel and as a 3-primary Cluster: real servers on loopback.

Each runs the token and sync scenarios through `extauthz serve`; Sentinel and Cluster also
lose their primary (SIGKILL) while checks run: no wrong allow at any moment, and after the
failover revocation is fast again (the listener moved to the new primary).
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from extauthz.core.credentials import token_hash
from extauthz.dev.ports import free_port
from tests.support.check import CheckClient
from tests.support.procs import REPO, RedisServer, extauthz_serve, run_cli, wait_for
from tests.support.readme import readme_block
from tests.support.topologies import (
    ClusterSetup,
    SentinelSetup,
    cli,
    kill,
    make_tls_files,
    replicated,
)

# The failover probes ask with revoked and unknown tokens from one address, over and over:
# the failed-authentication limit (429) is not what these tests are about.
SERVE = ("--policy-refresh", "30", "--auth-failure-burst", "0")

pytestmark = pytest.mark.redis

ENV = {"DENSENET161_SECRET": "x" * 16}


def create_token(url: str, route: str = "deployment-a") -> dict[str, str]:
    result: dict[str, str] = json.loads(
        run_cli(url, "token", "create", "--route", route, "--json").stdout
    )
    return result


def scenarios(
    url: str, client: CheckClient, key_prefix: str, redis_cli_del: Callable[[str], object]
) -> None:
    """Sync, create, allow, deny elsewhere, revoke by CLI and by hand: each within 1 s."""
    tok = create_token(url)
    bearer = f"Bearer {tok['token']}"
    wait_for(lambda: client.status("deployment-a", bearer) == 200, 2, "new token allowed")
    assert client.status("deployment-b", bearer) == 403
    assert client.status("deployment-a", "Bearer eat_unknown") == 401
    run_cli(url, "token", "revoke", tok["id"])
    wait_for(lambda: client.status("deployment-a", bearer) == 401, 1.0, "revoked by CLI")
    listed = run_cli(url, "token", "list", "--json").stdout
    assert tok["id"] not in listed

    other = create_token(url)
    bearer = f"Bearer {other['token']}"
    wait_for(lambda: client.status("deployment-a", bearer) == 200, 2, "second token")
    for _ in range(3):
        assert client.status("deployment-a", bearer) == 200  # cached
    redis_cli_del(f"{key_prefix}token:{token_hash(other['token'])}")
    wait_for(lambda: client.status("deployment-a", bearer) == 401, 1.0, "deleted by redis-cli")

    rotated = create_token(url)
    new = json.loads(run_cli(url, "token", "rotate", rotated["id"], "--json").stdout)
    wait_for(
        lambda: client.status("deployment-a", f"Bearer {rotated['token']}") == 401, 1.0, "rotated"
    )
    assert client.status("deployment-a", f"Bearer {new['token']}") == 200
    lifecycle_by_id(url, client)


def lifecycle_by_id(url: str, client: CheckClient) -> None:
    """The id index on this deployment: update, rotate with grace, list, export, import."""
    tok = create_token(url)
    old = f"Bearer {tok['token']}"
    run_cli(url, "token", "update", tok["id"], "--route", "deployment-b")
    wait_for(lambda: client.status("deployment-b", old) == 200, 1.0, "updated")
    assert client.status("deployment-a", old) == 403
    new = json.loads(run_cli(url, "token", "rotate", tok["id"], "--grace", "1h", "--json").stdout)
    assert client.status("deployment-b", f"Bearer {new['token']}") == 200
    assert client.status("deployment-b", old) == 200  # in its grace
    listed = run_cli(url, "token", "list", "--json").stdout.splitlines()
    assert tok["id"] in [json.loads(line)["id"] for line in listed]
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl") as f:
        f.write(run_cli(url, "token", "export").stdout)
        f.flush()
        assert "0 new, 0 updated, 0 replaced" in run_cli(url, "token", "import", f.name).stdout
    assert "0 added" in run_cli(url, "token", "reindex").stdout
    run_cli(url, "token", "revoke", tok["id"])
    wait_for(lambda: client.status("deployment-b", old) == 401, 1.0, "revoked in grace")
    assert client.status("deployment-b", f"Bearer {new['token']}") == 401


# --- TLS ----------------------------------------------------------------------------------


def test_tls(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path)
    port = free_port()
    server = RedisServer(
        tmp_path,
        port=port,
        extra=(
            "--port", "0",
            "--tls-port", str(port),
            "--tls-cert-file", str(tls["cert"]),
            "--tls-key-file", str(tls["key"]),
            "--tls-ca-cert-file", str(tls["ca"]),
            "--tls-auth-clients", "no",
        ),
    )  # fmt: skip
    server.start()
    try:
        url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={tls['ca']}"
        run_cli(url, "sync", str(REPO / "examples/policy.yaml"), env=ENV)
        with extauthz_serve(url, tmp_path / "s.log", *SERVE) as (grpc_port, _):
            client = CheckClient(grpc_port)
            wait_for(lambda: client.status("healthz") == 200, 5, "server ready")
            time.sleep(0.3)  # the invalidation channel subscribes
            scenarios(url, client, "extauthz:", lambda key: cli(port, "DEL", key, tls=tls))
            client.close()

        # a client that does not trust the CA, or speaks plain TCP, is refused with a reason
        untrusted = run_cli(f"rediss://127.0.0.1:{port}/0", "token", "list", check=False)
        assert untrusted.returncode == 1
        assert "certificate verify failed" in untrusted.stderr
        plain = run_cli(f"redis://127.0.0.1:{port}/0", "token", "list", check=False)
        assert plain.returncode == 1
        assert "cannot reach Redis" in plain.stderr
    finally:
        server.stop()


# --- Sentinel -----------------------------------------------------------------------------


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[SentinelSetup]:
    setup = SentinelSetup(tmp_path)
    setup.start()
    try:
        yield setup
    finally:
        setup.stop()


def test_sentinel_scenarios_and_failover(sentinel: SentinelSetup, tmp_path: Path) -> None:
    url = sentinel.url
    run_cli(url, "sync", str(REPO / "examples/policy.yaml"), env=ENV)
    with extauthz_serve(url, tmp_path / "s.log", *SERVE) as (port, _):
        client = CheckClient(port)
        wait_for(lambda: client.status("healthz") == 200, 5, "server ready")
        time.sleep(0.3)
        scenarios(url, client, "extauthz:", lambda key: cli(sentinel.primary_port(), "DEL", key))
        failover(
            url,
            client,
            kill_primary=lambda: kill(
                sentinel.primary
                if sentinel.primary.port == sentinel.primary_port()
                else sentinel.replica
            ),
            replicated=lambda: replicated(sentinel.primary_port(), "extauthz:replicated"),
        )
        client.close()
    assert "invalidation channel subscribed on primary" in (tmp_path / "s.log").read_text()


def test_sentinel_switchover_moves_the_listener(sentinel: SentinelSetup, tmp_path: Path) -> None:
    # a planned failover: the old primary stays up as a replica, so no connection breaks;
    # the listener must notice by asking the sentinels, and move to the new primary
    url = sentinel.url
    run_cli(url, "sync", str(REPO / "examples/policy.yaml"), env=ENV)
    log = tmp_path / "s.log"
    with extauthz_serve(url, log, *SERVE) as (port, _):
        client = CheckClient(port)
        wait_for(lambda: client.status("healthz") == 200, 5, "server ready")
        old = sentinel.primary_port()
        wait_for(lambda: f"subscribed on primary 127.0.0.1:{old}" in log.read_text(), 5, "listener")
        cli(sentinel.sentinel_ports[0], "SENTINEL", "FAILOVER", sentinel.name)
        wait_for(lambda: sentinel.primary_port() != old, 15, "switchover")
        new = sentinel.primary_port()
        wait_for(lambda: f"subscribed on primary 127.0.0.1:{new}" in log.read_text(), 5, "move")
        tok = create_token(url)
        bearer = f"Bearer {tok['token']}"
        wait_for(lambda: client.status("deployment-a", bearer) == 200, 5, "token on new primary")
        for _ in range(3):
            assert client.status("deployment-a", bearer) == 200  # cached
        cli(new, "DEL", f"extauthz:token:{token_hash(tok['token'])}")
        wait_for(lambda: client.status("deployment-a", bearer) == 401, 1.0, "DEL on new primary")
        client.close()


# --- Cluster ------------------------------------------------------------------------------


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ClusterSetup]:
    setup = ClusterSetup(tmp_path)
    setup.start()
    try:
        yield setup
    finally:
        setup.stop()


def test_cluster_scenarios_and_failover(cluster: ClusterSetup, tmp_path: Path) -> None:
    # as the README says: its least-privilege users on every node, notifications configured
    block = readme_block("redis-acl-cluster", lang="")
    for node in cluster.nodes:
        node.cli("CONFIG", "SET", "notify-keyspace-events", "Kghxe")
        for line in block.splitlines():
            node.cli("ACL", "SETUSER", *line.split()[1:])
    hosts = cluster.url.removeprefix("redis+cluster://")
    admin = f"redis+cluster://extauthz-admin:CHANGE-ME-admin@{hosts}"
    reader = f"redis+cluster://extauthz-server:CHANGE-ME-server@{hosts}"
    prefix = "{extauthz}:"
    run_cli(admin, "sync", str(REPO / "examples/policy.yaml"), env=ENV)
    # the default prefix gained a hash tag: every key lives in the slot of "extauthz"
    owner = cluster.owner_of(prefix + "policy")
    assert cli(owner.port, "HGET", prefix + "policy", "version") == "1"
    denied = run_cli(reader, "token", "create", "--route", "deployment-a", check=False)
    assert denied.returncode == 1 and "Redis refused" in denied.stderr

    with extauthz_serve(reader, tmp_path / "s.log", *SERVE) as (port, _):
        client = CheckClient(port)
        wait_for(lambda: client.status("healthz") == 200, 5, "server ready")
        time.sleep(0.3)
        scenarios(admin, client, prefix, lambda key: cli(cluster.owner_of(key).port, "DEL", key))
        failover(
            admin,
            client,
            kill_primary=lambda: kill(cluster.owner_of(prefix + "policy")),
            replicated=lambda: replicated(
                cluster.owner_of(prefix + "policy").port, prefix + "replicated"
            ),
        )
        client.close()
    log = (tmp_path / "s.log").read_text()
    assert "cannot enable keyspace notifications" not in log
    assert "failed" in log and "subscribed on primary" in log


def test_cluster_prefix_needs_a_hash_tag() -> None:
    # refused before any connection: no cluster listens there
    nowhere = f"redis+cluster://127.0.0.1:{free_port()}"
    result = run_cli(nowhere, "token", "list", "--key-prefix", "models:", check=False)
    assert result.returncode == 2
    assert "must hold a hash tag, e.g. '{models}:'" in result.stderr


# --- the failover itself --------------------------------------------------------------------


def failover(
    url: str,
    client: CheckClient,
    kill_primary: Callable[[], None],
    replicated: Callable[[], bool],
) -> None:
    """Kill the primary while checks run: a revoked or unknown token is never allowed, a
    valid one is allowed again once a replica took over, and revocation is fast again."""
    valid = create_token(url)
    revoked = create_token(url)
    run_cli(url, "token", "revoke", revoked["id"])
    assert replicated(), "the revocation reached the replica"
    good, bad = f"Bearer {valid['token']}", f"Bearer {revoked['token']}"
    assert client.status("deployment-a", good) == 200

    wrong: list[str] = []
    seen: dict[str, set[int]] = {"valid": set(), "revoked": set(), "unknown": set()}
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            for name, auth, allowed in (
                ("valid", good, {200, 503}),
                ("revoked", bad, {401, 503}),
                ("unknown", "Bearer eat_never-issued", {401, 503}),
            ):
                status = client.status("deployment-a", auth)
                seen[name].add(status)
                if status not in allowed:
                    wrong.append(f"{name} → {status}")

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        kill_primary()
        killed = time.monotonic()
        # the server answered 503 or served from Redis again; wait for the new primary
        wait_for(lambda: create_token_quietly(url), 30, "a writable primary after failover")
        took = time.monotonic() - killed
    finally:
        stop.set()
        prober.join()
    assert not wrong, wrong
    assert 200 in seen["valid"]

    # after the failover: revocation reaches the server within a second again
    wait_for(lambda: client.status("deployment-a", good) == 200, 5, "valid token after failover")
    time.sleep(1.5)  # the listener finds the new primary within its 1 s check
    run_cli(url, "token", "revoke", valid["id"])
    wait_for(lambda: client.status("deployment-a", good) == 401, 1.0, "revocation after failover")
    print(f"failover: writable again after {took:.1f}s; statuses seen: {seen}")


def create_token_quietly(url: str) -> bool:
    return run_cli(url, "token", "create", "--route", "embedder", check=False).returncode == 0


def test_a_confirmed_revoke_survives_the_primarys_crash(tmp_path: Path) -> None:
    """`token revoke` returns only once a replica holds the deletion
    (docs/security.md#security-model, revocation is confirmed). Here the replica is detached
    while the revoke is written and re-attached only after it; the primary is killed (SIGKILL)
    the moment the command returns and the replica promoted: the token is gone there. Had the
    command not waited, the primary would die before the replica was re-attached."""
    primary = RedisServer(tmp_path / "p")
    replica = RedisServer(tmp_path / "r")
    for server in (primary, replica):
        server.workdir.mkdir()
    primary.extra = ("--repl-diskless-sync-delay", "0")  # (a full resync at once, not in 5 s)
    primary.start()
    replica.extra = ("--replicaof", "127.0.0.1", str(primary.port))
    replica.start()
    try:
        wait_for(lambda: "master_link_status:up" in replica.cli("INFO", "replication"), 10, "sync")
        create = ("token", "create", "--route", "m", "--allow-unknown-route", "--json")
        made = json.loads(run_cli(primary.url, *create).stdout)  # (no policy here)
        key = f"extauthz:token:{token_hash(made['token'])}"
        assert replicated(primary.port, "extauthz:marker")
        replica.cli("REPLICAOF", "NO", "ONE")  # detached: the revoke is not sent to it yet
        done: dict[str, str] = {}

        def revoke() -> None:
            result = run_cli(
                primary.url, "token", "revoke", made["id"], "--ack-timeout", "10", check=False
            )
            done["err"] = result.stderr

        worker = threading.Thread(target=revoke)
        worker.start()
        wait_for(lambda: primary.cli("EXISTS", key) == "0", 20, "the revoke written")
        worker.join(1.5)
        if worker.is_alive():  # waiting for a replica, as it must: give it one
            replica.cli("REPLICAOF", "127.0.0.1", str(primary.port))
            worker.join(30)
        kill(primary)  # the moment the command has returned
        replica.cli("REPLICAOF", "NO", "ONE")
        assert replica.cli("EXISTS", key) == "0", "the revoke was lost with the primary"
        assert "replica" not in done["err"], done["err"]  # no warning: one confirmed it
    finally:
        replica.stop()
        primary.stop()


def test_a_revoke_without_a_replica_says_so(redis_server: RedisServer) -> None:
    create = ("token", "create", "--route", "m", "--allow-unknown-route", "--json")  # (no policy)
    made = json.loads(run_cli(redis_server.url, *create).stdout)
    result = run_cli(redis_server.url, "token", "revoke", made["id"])
    assert result.returncode == 0 and "no replica" in result.stderr
