"""The warm decision path in process, stage by stage, and what rate limits and usage
metering add.

Times the real gRPC request reader and handler (`envoy_check.check_input_reader`: parse,
facts; `server.check_handler`: decision, response bytes) on the request's bytes per call, for a repeated request with a
valid token, in four setups measured alternately: no limit and no metering, an unreached
rate limit (10^9/m), usage metering, both; metrics and the failure limiter are on in all.
Then each stage alone, so that the README can say where each microsecond goes. A machine's
noise moves whole-server benchmarks by ±20 % here; this compares microseconds on one thread.

    python bench/decision_path.py [--calls 100000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import fakeredis  # noqa: E402

from bench.run import check_request_frame  # noqa: E402
from extauthz.admin import tokens  # noqa: E402
from extauthz.admin.sync import sync  # noqa: E402
from extauthz.core.policy import parse_policy  # noqa: E402
from extauthz.core.rate_limit import RateLimit  # noqa: E402
from extauthz.runtime.auth_failures import FailureLimiter  # noqa: E402
from extauthz.runtime.authorizer import Authorizer  # noqa: E402
from extauthz.runtime.envoy_check import (  # noqa: E402
    CheckRequest,
    check_input_reader,
    check_response_bytes,
)
from extauthz.runtime.metrics import Metrics  # noqa: E402
from extauthz.runtime.rate_limiter import RateLimiter  # noqa: E402
from extauthz.runtime.server import check_handler  # noqa: E402
from extauthz.runtime.usage import UsageMeter  # noqa: E402
from extauthz.storage.store import Store  # noqa: E402
from extauthz.storage.token_cache import TokenCache  # noqa: E402

SETUPS = ("plain", "limited", "usage", "limited+usage")


class World:
    """An authorizer on fakeredis as the server builds it, and a request's bytes."""

    def __init__(self, setup: str) -> None:
        store = Store(fakeredis.FakeRedis(decode_responses=True), "extauthz:")
        sync(store, parse_policy("version: 1\nroutes:\n  bench: {access: protected}\n"))
        cache = TokenCache(store.token_record)
        cache.set_channel_ok(True)
        limit = RateLimit(10**9, "m") if "limited" in setup else None
        token = tokens.create(store, ["bench"], now=time.time(), rate_limit=limit).token
        self.auth = Authorizer(
            store,
            None,
            cache,
            metrics=Metrics(),
            failures=FailureLimiter(5.0, 50),
            limiter=RateLimiter(store),
            usage=UsageMeter(store, flush_every=10**9) if "usage" in setup else None,
        )
        self.auth.refresh_policy()
        self.body = check_request_frame(token)[5:]
        self.read = check_input_reader()
        self.handler = check_handler(self.auth)
        for _ in range(20_000):  # warm: memo, cache, a lease, the response bytes
            self.handler(self.read(self.body), None)


def timed(fn: Callable[[], Any], calls: int) -> float:
    """µs per call of `fn`."""
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - started) / calls * 1e6


def handler_us(world: World, calls: int) -> float:
    """Reader and handler on the request's bytes, the parse (grpcio's part in a plain
    server too) subtracted."""
    body, handler, read, parse = world.body, world.handler, world.read, CheckRequest.FromString
    return timed(lambda: handler(read(body), None), calls) - timed(lambda: parse(body), calls)


def stages(world: World, calls: int) -> dict[str, float]:
    """Each stage of the handler alone (µs per call)."""
    auth, body, parse, read = world.auth, world.body, CheckRequest.FromString, world.read
    facts, headers, attributes = read(body)
    decision = auth.decide(facts, headers, attributes)
    now = time.time()
    snapshot = auth.snapshot
    parse_us = timed(lambda: parse(body), calls)
    out = {
        "parse (grpcio's deserializer, in both servers)": parse_us,
        "facts": timed(lambda: read(body), calls) - parse_us,
        "decide: memo hit, policy, cache epoch": timed(
            lambda: auth._decide(facts, now, snapshot, attributes), calls
        ),
        "decide: metrics": timed(
            lambda: auth.metrics.decision("bench", "allow", "granted", 1e-5),  # type: ignore[union-attr]
            calls,
        ),
        "decide: all of it": timed(lambda: auth.decide(facts, headers, attributes), calls),
        "response bytes": timed(lambda: check_response_bytes(decision, ""), calls),
    }
    if auth.limiter is not None and decision.limits:
        out["decide: rate limit (lease)"] = timed(lambda: auth.limiter.admit(decision, now), calls)  # type: ignore[union-attr]
    if auth.usage is not None:
        out["decide: usage count"] = timed(lambda: auth.usage.count("tok_x", True, now), calls)  # type: ignore[union-attr]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    worlds = {setup: World(setup) for setup in SETUPS}
    times: dict[str, list[float]] = {setup: [] for setup in SETUPS}
    for _ in range(args.rounds):
        for setup, world in worlds.items():
            times[setup].append(handler_us(world, args.calls))
    plain = statistics.median(times["plain"])
    print(f"{'handler (fresh request per call)':<34} {'µs/call':>8} {'added µs':>9}")
    for setup in SETUPS:
        us = statistics.median(times[setup])
        print(f"{setup:<34} {us:>8.2f} {us - plain:>+9.2f}")
    print(f"\n{'stage (limited+usage)':<48} {'µs/call':>8}")
    rounds = [stages(worlds["limited+usage"], args.calls) for _ in range(args.rounds)]
    for stage in rounds[0]:
        print(f"{stage:<48} {statistics.median(r[stage] for r in rounds):>8.2f}")
    print(f"(medians of {args.rounds} alternating rounds of {args.calls:,} calls)")


if __name__ == "__main__":
    main()
