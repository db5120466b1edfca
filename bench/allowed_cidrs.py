"""What `allowed_cidrs` costs a Check, in process: the request reader and the authorizer on
a CheckRequest's bytes (the token cache warm, a private redis-server behind it), for a
token without allowed_cidrs, one bound to 127.0.0.1 called from there (allowed) and from
127.0.0.2 (403); each both remembered (the same request repeated: the memo answers) and
decided afresh (the memo off). Medians of --rounds rounds of --calls calls, in µs.

Run from another checkout (PYTHONPATH) it measures the "without" rows there too: the
figure to compare, before and after.

    python bench/allowed_cidrs.py [--calls 50000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from envoy.service.auth.v3 import external_auth_pb2  # noqa: E402

from bench.private_redis import private_redis  # noqa: E402
from extauthz.admin import tokens  # noqa: E402
from extauthz.admin.sync import sync  # noqa: E402
from extauthz.core.bounded import BoundedDict  # noqa: E402
from extauthz.core.policy import parse_policy  # noqa: E402
from extauthz.runtime.authorizer import Authorizer  # noqa: E402
from extauthz.runtime.envoy_check import check_input_reader  # noqa: E402
from extauthz.storage.store import open_store  # noqa: E402
from extauthz.storage.token_cache import TokenCache  # noqa: E402


def request_bytes(token: str, source: str) -> bytes:
    req = external_auth_pb2.CheckRequest()
    http = req.attributes.request.http
    http.method, http.path, http.host = "POST", "/predict", "models.example.com"
    http.headers.update(
        {":method": "POST", ":path": "/predict", "authorization": f"Bearer {token}"}
    )
    req.attributes.context_extensions["route"] = "model"
    req.attributes.source.address.socket_address.address = source
    return bytes(req.SerializeToString())


def timed(call: Callable[[], object], calls: int, rounds: int) -> float:
    """Median µs per call over `rounds`."""
    results = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(calls):
            call()
        results.append((time.perf_counter() - started) / calls * 1e6)
    return statistics.median(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    bound_supported = "allowed_cidrs" in inspect.signature(tokens.create).parameters
    with private_redis("extauthz-bench-cidrs-") as (port, _):
        store = open_store(f"redis://127.0.0.1:{port}/0", "extauthz:", 5.0)
        sync(store, parse_policy("version: 1\nroutes:\n  model: {access: protected}\n"))
        cache = TokenCache(store.token_record, fetch_team=store.team_record)
        cache.set_channel_ok(True)
        auth = Authorizer(store, None, cache)
        auth.refresh_policy()
        read = check_input_reader()
        now = time.time()
        cases = {
            "without allowed_cidrs": (tokens.create(store, ["model"], now=now).token, "127.0.0.2")
        }
        if bound_supported:
            bound = tokens.create(store, ["model"], now=now, allowed_cidrs=["127.0.0.1"]).token
            cases["allowed_cidrs, allowed"] = (bound, "127.0.0.1")
            cases["allowed_cidrs, refused (403)"] = (bound, "127.0.0.2")
        rows = []
        for memo in (True, False):
            if not memo:
                auth._memo = BoundedDict(0, 0)
            for label, (token, source) in cases.items():
                data = request_bytes(token, source)

                def check(data: bytes = data) -> object:
                    facts, headers, peer = read(data)
                    return auth.decide(facts, headers, peer)

                check()  # warm: the token (and team) cached
                micros = timed(check, args.calls, args.rounds)
                rows.append((label, "remembered" if memo else "afresh", micros))
    print(f"{'token':<32} {'memo':<11} {'µs per Check':>12}")
    for label, memo_text, micros in rows:
        print(f"{label:<32} {memo_text:<11} {micros:>12.2f}")


if __name__ == "__main__":
    main()
