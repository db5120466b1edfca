"""A flood of random checksummed-form secrets costs Redis nothing.

Starts a private redis-server and a real `extauthz serve` (one worker, the failed-
authentication limit off so that nothing but the checksum keeps requests from Redis), then
sends --count Check calls over gRPC, each with a fresh random secret of the checksummed form
(`eat_` + 38 base62 characters) whose checksum fails, from varying client addresses. Redis's
own counters (`INFO commandstats`, `INFO stats` total_commands_processed) are read before
and after; the server's background commands (heartbeats, policy polls) are measured in an
idle window first and scaled to the flood's length. As a control, --control calls with
random secrets of the older form (which must be looked up) show that the counter sees
lookups: one HGETALL and one PTTL each.

    python bench/checksum_flood.py [--count 100000] [--control 1000] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
import redis  # noqa: E402
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc  # noqa: E402

from bench.private_redis import private_redis  # noqa: E402
from extauthz.core.credentials import BASE62, checksum_fails  # noqa: E402
from extauthz.dev.ports import free_port, wait_port  # noqa: E402

LOOKUPS = ("hgetall", "pttl")  # a token (or team) lookup: HGETALL + PTTL, pipelined
POLICY = "version: 1\nroutes:\n  model: {access: protected}\n"
IN_FLIGHT = 64


def bad_secret() -> str:
    """A random secret of the checksummed form whose checksum fails (1 in 62**6 would pass)."""
    while True:
        secret = "eat_" + "".join(secrets.choice(BASE62) for _ in range(38))
        if checksum_fails(secret):
            return secret


def old_secret() -> str:
    """A random secret of the older form (`eat_` + 43 URL-safe base64): looked up."""
    return "eat_" + secrets.token_urlsafe(32)


def commands(client: redis.Redis) -> dict[str, int]:
    """Calls per command so far, and `total` (total_commands_processed)."""
    stats: dict[str, Any] = client.info("commandstats")
    out = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
    out["total"] = int(client.info("stats")["total_commands_processed"])
    return out


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def request(secret: str, i: int) -> external_auth_pb2.CheckRequest:
    req = external_auth_pb2.CheckRequest()
    http = req.attributes.request.http
    http.method, http.path, http.host = "POST", "/predict", "models.example.com"
    http.headers.update(
        {":method": "POST", ":path": "/predict", "authorization": f"Bearer {secret}"}
    )
    req.attributes.context_extensions["route"] = "model"
    address = req.attributes.source.address.socket_address
    address.address = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
    address.port_value = 40000
    return req


def send(stub: Any, count: int, secret: Callable[[], str]) -> tuple[float, dict[int, int]]:
    """`count` Check calls, IN_FLIGHT at a time; (seconds, HTTP status → calls)."""
    requests = [request(secret(), i) for i in range(count)]
    statuses: dict[int, int] = {}
    started = time.perf_counter()
    for start in range(0, count, IN_FLIGHT):
        futures = [stub.Check.future(r, timeout=10) for r in requests[start : start + IN_FLIGHT]]
        for future in futures:
            resp = future.result()
            kind = resp.WhichOneof("http_response")
            code = 200 if kind == "ok_response" else int(getattr(resp, kind).status.code)
            statuses[code] = statuses.get(code, 0) + 1
    return time.perf_counter() - started, statuses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--control", type=int, default=1_000)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    with private_redis("extauthz-bench-checksum-") as (redis_port, tmp):
        url = f"redis://127.0.0.1:{redis_port}/0"
        policy = tmp / "policy.yaml"
        policy.write_text(POLICY)
        cli = [sys.executable, "-m", "extauthz"]
        subprocess.run([*cli, "sync", str(policy), "--redis-url", url], check=True, cwd=REPO)
        made = subprocess.run(
            [*cli, "token", "create", "--route", "model", "--json", "--redis-url", url],
            check=True, capture_output=True, text=True, cwd=REPO,
        )  # fmt: skip
        valid = json.loads(made.stdout)["token"]
        port = free_port()
        server = subprocess.Popen(
            [*cli, "serve", "--listen", f"127.0.0.1:{port}", "--redis-url", url,
             "--workers", "1", "--auth-failure-burst", "0", "--log-level", "warning"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=(tmp / "serve.log").open("wb"),
        )  # fmt: skip
        try:
            wait_port(port, timeout=30)
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            client = redis.Redis(port=redis_port)
            _, ok = send(stub, 1, lambda: valid)  # warm: the valid one passes
            assert ok == {200: 1}, ok
            figures = measure(stub, client, args.count, args.control)
            channel.close()
        finally:
            server.terminate()
            server.wait()
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    if figures["flood"]["lookup_commands"] != 0:
        raise SystemExit("bench: the flood of failed checksums reached Redis")


def measure(stub: Any, client: redis.Redis, count: int, control: int) -> dict[str, Any]:
    idle_seconds = 5.0
    before = commands(client)
    time.sleep(idle_seconds)
    idle = delta(commands(client), before)
    idle_total = idle.get("total", 0) - 2  # (the two INFO calls of `commands`)
    before = commands(client)
    seconds, statuses = send(stub, count, bad_secret)
    flood = delta(commands(client), before)
    background = idle_total / idle_seconds * seconds
    before = commands(client)
    control_seconds, control_statuses = send(stub, control, old_secret)
    seen = delta(commands(client), before)
    return {
        "flood": {
            "requests": count,
            "statuses": statuses,
            "seconds": round(seconds, 2),
            "lookup_commands": sum(flood.get(c, 0) for c in LOOKUPS),
            "commands": flood,
            "background_expected": round(background, 1),
            "total_minus_background": round(flood.get("total", 0) - 2 - background, 1),
        },
        "idle": {"seconds": idle_seconds, "commands": idle},
        "control_older_form": {
            "requests": control,
            "statuses": control_statuses,
            "seconds": round(control_seconds, 2),
            "lookup_commands": sum(seen.get(c, 0) for c in LOOKUPS),
            "commands": seen,
        },
    }


if __name__ == "__main__":
    main()
