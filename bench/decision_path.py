"""The warm decision path in process: what rate limits and usage metering add per request.

Times `Authorizer.decide` (plus the response bytes, as the gRPC handler does) for a repeated
request with a valid token, in four setups measured alternately in the same run: no limit
and no metering, an unreached rate limit (10^9/m), usage metering, both. A machine's noise
moves whole-server benchmarks by ±20 % here; this one compares microseconds on one thread.
The cost per call is then set against the whole-server CPU per call measured by bench/run.py
(`--call-us`, default 350 µs: direct, 1 worker) to give the throughput ratio it implies.

    python bench/decision_path.py [--calls 200000] [--rounds 5] [--call-us 350]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import fakeredis  # noqa: E402

from extauthz.admin import tokens  # noqa: E402
from extauthz.admin.sync import sync  # noqa: E402
from extauthz.core.decision import RequestFacts  # noqa: E402
from extauthz.core.policy import parse_policy  # noqa: E402
from extauthz.core.rate_limit import RateLimit  # noqa: E402
from extauthz.runtime.authorizer import Authorizer  # noqa: E402
from extauthz.runtime.envoy_check import check_response_bytes  # noqa: E402
from extauthz.runtime.rate_limiter import RateLimiter  # noqa: E402
from extauthz.runtime.usage import UsageMeter  # noqa: E402
from extauthz.storage.store import Store  # noqa: E402
from extauthz.storage.token_cache import TokenCache  # noqa: E402

SETUPS = ("plain", "limited", "usage", "limited+usage")


def authorizer(setup: str) -> tuple[Authorizer, RequestFacts]:
    store = Store(fakeredis.FakeRedis(decode_responses=True), "extauthz:")
    sync(store, parse_policy("version: 1\nroutes:\n  bench: {access: protected}\n"))
    cache = TokenCache(store.token_record)
    cache.set_channel_ok(True)
    limit = RateLimit(10**9, "m") if "limited" in setup else None
    token = tokens.create(store, ["bench"], now=time.time(), rate_limit=limit).token
    auth = Authorizer(
        store,
        None,
        cache,
        limiter=RateLimiter(store),
        usage=UsageMeter(store, flush_every=10**9) if "usage" in setup else None,
    )
    auth.refresh_policy()
    return auth, RequestFacts("bench", source_address="10.0.0.1", authorization=f"Bearer {token}")


def per_call_us(auth: Authorizer, facts: RequestFacts, calls: int) -> float:
    decide = auth.decide
    started = time.perf_counter()
    for _ in range(calls):
        check_response_bytes(decide(facts, ""))
    return (time.perf_counter() - started) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--call-us", type=float, default=350.0)
    args = parser.parse_args()
    worlds = {setup: authorizer(setup) for setup in SETUPS}
    for auth, facts in worlds.values():  # warm: memo, cache, a lease
        per_call_us(auth, facts, 20_000)
    times: dict[str, list[float]] = {setup: [] for setup in SETUPS}
    for _ in range(args.rounds):
        for setup, (auth, facts) in worlds.items():
            times[setup].append(per_call_us(auth, facts, args.calls))
    plain = statistics.median(times["plain"])
    print(f"{'setup':<16} {'µs/call':>8} {'added µs':>9} {'implied throughput':>19}")
    for setup in SETUPS:
        us = statistics.median(times[setup])
        added = us - plain
        implied = args.call_us / (args.call_us + added)
        print(f"{setup:<16} {us:>8.2f} {added:>+9.2f} {implied:>19.3f}")
    print(
        f"(median of {args.rounds} alternating rounds of {args.calls:,} calls; implied: "
        f"throughput ratio to 'plain' for a {args.call_us:g} µs gRPC call)"
    )


if __name__ == "__main__":
    main()
