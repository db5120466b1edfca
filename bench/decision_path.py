"""The warm decision path in process, stage by stage, and what rate limits and usage
metering add.

Times the real gRPC request reader and handler (`envoy_check.check_input_reader`: parse,
facts; `server.check_handler`: decision, response bytes) on the request's bytes, for a
repeated request with a valid token, in five setups measured alternately: no limit and no
metering, an unreached rate limit (10^9/m), usage metering, both, and the first with
`--otlp-endpoint` twice: `traced` (Envoy's traceparent sampled: a span per Check, exported in
batches to nowhere) and `unsampled` (not sampled: no span); metrics and the failure limiter
are on in all. Without the flag the handler is the first's (server.check_handler): no
tracing code runs. Then each stage alone, so that the README can say where each
microsecond goes; with --instructions also in instructions (valgrind's callgrind, which the
machine's load cannot move). A machine's noise moves whole-server benchmarks by ±20 % here;
this compares microseconds on one thread.

    python bench/decision_path.py [--calls 100000] [--rounds 5] [--instructions]
"""

from __future__ import annotations

import argparse
import functools
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import fakeredis  # noqa: E402

from bench.run import check_request_frame  # noqa: E402
from extauthz.admin import tokens  # noqa: E402
from extauthz.admin.sync import sync  # noqa: E402
from extauthz.config import otlp_target  # noqa: E402
from extauthz.core.policy import parse_policy  # noqa: E402
from extauthz.core.rate_limit import RateLimit  # noqa: E402
from extauthz.runtime.auth_failures import FailureLimiter  # noqa: E402
from extauthz.runtime.authorizer import Authorizer  # noqa: E402
from extauthz.runtime.envoy_check import (  # noqa: E402
    CheckRequest,
    check_handler,
    check_input_reader,
    check_response_bytes,
)
from extauthz.runtime.limiter import Limiter  # noqa: E402
from extauthz.runtime.metrics import Metrics  # noqa: E402
from extauthz.runtime.tracing import Tracing  # noqa: E402
from extauthz.runtime.usage import UsageMeter  # noqa: E402
from extauthz.storage.store import Store  # noqa: E402
from extauthz.storage.token_cache import TokenCache  # noqa: E402

SETUPS = ("plain", "limited", "usage", "limited+usage", "traced", "unsampled")
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0"


class Envoy:
    """The handler's gRPC context: the metadata Envoy sends (its traceparent)."""

    def __init__(self, sampled: bool) -> None:
        self.metadata = (("traceparent", TRACEPARENT + str(int(sampled))),)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata


class Nowhere:
    """A span exporter that drops every batch (the SDK's batching thread still runs)."""

    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 0) -> bool:
        return True


def authorizer(
    policy: str, routes: list[str], limit: RateLimit | None = None, usage: bool = False
) -> tuple[Authorizer, str]:
    """An authorizer on fakeredis as the server builds it (token cache, metrics, failure
    limiter, rate limiter; usage metering if asked) with `policy` published, and a token for
    `routes` (with `limit`)."""
    store = Store(fakeredis.FakeRedis(decode_responses=True), "extauthz:")
    sync(store, parse_policy(policy))
    cache = TokenCache(store.token_record)
    cache.set_channel_ok(True)
    token = tokens.create(store, routes, now=time.time(), rate_limit=limit).token
    auth = Authorizer(
        store,
        None,
        cache,
        metrics=Metrics(),
        failures=FailureLimiter(5.0, 50),
        limiter=Limiter(store),
        usage=UsageMeter(store, flush_every=10**9) if usage else None,
    )
    auth.refresh_policy()
    return auth, token


class World:
    """An authorizer on fakeredis as the server builds it, and a request's bytes."""

    def __init__(self, setup: str) -> None:
        limit = RateLimit(10**9, "m") if "limited" in setup else None
        self.auth, token = authorizer(
            "version: 1\nroutes:\n  bench: {access: protected}\n",
            ["bench"],
            limit,
            "usage" in setup,
        )
        self.body = check_request_frame(token)[5:]
        self.read = check_input_reader()
        self.handler: Callable[[Any, Any], bytes] = check_handler(self.auth)
        if setup in ("traced", "unsampled"):
            tracing = Tracing(otlp_target("127.0.0.1:4317"), exporter=Nowhere())
            traced, envoy = tracing.check_handler(self.auth), Envoy(setup == "traced")
            self.handler = lambda read, _context: traced(read, envoy)
        for _ in range(2_000):  # warm: memo, cache, a lease, the response bytes
            self.handler(self.read(self.body), None)


def handler_us(world: World, calls: int) -> float:
    """Reader and handler on the request's bytes, the parse (grpcio's part in a plain
    server too) subtracted."""
    body, handler, read, parse = world.body, world.handler, world.read, CheckRequest.FromString
    return timed(lambda: handler(read(body), None), calls) - timed(lambda: parse(body), calls)


def stage_calls(world: World) -> dict[str, Callable[[], Any]]:
    """Each stage of the handler as a call (read and handler include the parse)."""
    auth, body, parse, read, handler = (
        world.auth, world.body, CheckRequest.FromString, world.read, world.handler
    )  # fmt: skip
    facts, headers, attributes = read(body)
    decision = auth.decide(facts, headers, attributes)
    now = time.time()
    snapshot = auth.snapshot
    metrics, limiter, usage = auth.metrics, auth.limiter, auth.usage
    assert metrics is not None and limiter is not None
    calls: dict[str, Callable[[], Any]] = {
        "noop": lambda: None,
        "parse": lambda: parse(body),
        "read": lambda: read(body),
        "memo": lambda: auth._decide(facts, now, snapshot, attributes),
        "metrics": lambda: metrics.decision("bench", "allow", "granted", 1e-5),
        "decide": lambda: auth.decide(facts, headers, attributes),
        "bytes": lambda: check_response_bytes(decision, ""),
        "handler": lambda: handler(read(body), None),
    }
    if decision.limits:
        calls["limit"] = lambda: limiter.admit(decision, now)
    if usage is not None:
        calls["usage"] = lambda: usage.count("tok_x", True, now)
    return calls


ROWS = {  # README row → (setup, stages added, stages taken off)
    "parse (grpcio's deserializer, in both servers)": ("plain", ["parse"], []),
    "read the request": ("plain", ["read"], ["parse"]),
    "memo hit (policy, cache epoch)": ("plain", ["memo"], []),
    "metrics": ("plain", ["metrics"], []),
    "rate limit (unreached, leased)": ("limited+usage", ["limit"], []),
    "usage count": ("limited+usage", ["usage"], []),
    "the rest of decide": ("plain", ["decide"], ["memo", "metrics"]),
    "response bytes": ("plain", ["bytes"], []),
    "whole handler, neither": ("plain", ["handler"], ["parse"]),
    "whole handler, limit + usage": ("limited+usage", ["handler"], ["parse"]),
}


def timed(fn: Callable[[], Any], calls: int) -> float:
    """µs per call of `fn`."""
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - started) / calls * 1e6


def instructions(setup: str, stage: str, calls: int) -> float:
    """Instructions per call of one stage, counted by callgrind in a child process: only
    inside functools.reduce, which runs the stage `calls` times (minus the loop's own)."""
    with tempfile.TemporaryDirectory(prefix="extauthz-stage-") as tmp:
        out = Path(tmp) / "callgrind.out"
        subprocess.run(
            ["valgrind", "--tool=callgrind", "--toggle-collect=functools_reduce",
             f"--callgrind-out-file={out}", sys.executable, __file__, "--stage",
             f"{setup}:{stage}", "--calls", str(calls)],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        found = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.M)
        assert found is not None, "callgrind wrote no total"
        return int(found.group(1)) / calls


def run_stage(name: str, calls: int) -> None:
    """--stage SETUP:STAGE (under callgrind, see `instructions`)."""
    setup, stage = name.split(":")
    fn = stage_calls(World(setup))[stage]
    functools.reduce(lambda _, __: fn(), range(calls), None)


def count_rows(calls: int) -> dict[str, float]:
    """Instructions per call of each README row (two stages counted at a time)."""
    needed = sorted({(setup, st) for setup, add, sub in ROWS.values() for st in add + sub})
    needed += [(setup, "noop") for setup in SETUPS if setup in ("plain", "limited+usage")]
    with ThreadPoolExecutor(2) as pool:
        per_stage = pool.map(lambda key: instructions(key[0], key[1], calls), needed)
        counted = dict(zip(needed, per_stage, strict=True))
    rows = {}
    for row, (setup, add, sub) in ROWS.items():
        loop = counted[(setup, "noop")]
        rows[row] = sum(counted[(setup, st)] - loop for st in add) - sum(
            counted[(setup, st)] - loop for st in sub
        )
    return rows


def time_rows(worlds: dict[str, World], calls: int) -> dict[str, float]:
    """µs per call of each README row."""
    timings = {
        setup: {stage: timed(fn, calls) for stage, fn in stage_calls(worlds[setup]).items()}
        for setup in ("plain", "limited+usage")
    }
    rows = {}
    for row, (setup, add, sub) in ROWS.items():
        t = timings[setup]
        rows[row] = sum(t[st] - t["noop"] for st in add) - sum(t[st] - t["noop"] for st in sub)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--instructions", action="store_true", help="also count instructions (callgrind, ~3 min)"
    )
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        run_stage(args.stage, args.calls)
        return
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
    rounds = [time_rows(worlds, args.calls) for _ in range(args.rounds)]
    counts = count_rows(2000) if args.instructions else {}
    print("\n| stage | µs/call | instructions |\n|---|---:|---:|")
    for row in ROWS:
        us = statistics.median(r[row] for r in rounds)
        n = f"{counts[row]:,.0f}" if row in counts else "-"
        print(f"| {row} | {us:.2f} | {n} |")
    print(f"(µs: medians of {args.rounds} alternating rounds of {args.calls:,} calls", end="")
    print("; instructions: callgrind, 2,000 calls a stage)" if counts else ")")


if __name__ == "__main__":
    main()
