"""Instructions per Check, counted by valgrind's callgrind: the same on a busy machine as on
a quiet one, so the servers' per-call work can be compared where req/s cannot.

    python bench/instructions.py [--calls 500] [--json FILE]

Each server runs under callgrind with instrumentation off; after 200 warm-up calls it is
switched on for `--calls` sequential Check calls (a valid token, a protected route), and
then for as long again with no call: every thread counts (gRPC's poller and handler
threads, our background threads), and the idle window's count is taken off, since the
background threads' polls (once a second) would weigh ~50 times their real share under
valgrind's slowdown. Servers: the bare
grpcio server (bench/bare_check.py), our stack with an empty handler (bench/empty_check.py),
extauthz with an unreached rate limit and usage metering on, with both off, and with both
off and traces on (`--otlp-endpoint` to an OTLP/gRPC receiver in this process; every call
carries a `traceparent`, as Envoy's tracer sends it, sampled in 1 of 100).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.run import CHECK_PATH, check_request_frame  # noqa: E402
from extauthz.admin import tokens  # noqa: E402
from extauthz.admin.sync import sync  # noqa: E402
from extauthz.core.policy import parse_policy  # noqa: E402
from extauthz.core.rate_limit import RateLimit  # noqa: E402
from extauthz.dev.ports import free_port, wait_port  # noqa: E402
from extauthz.storage.invalidation import REQUIRED_FLAGS  # noqa: E402
from extauthz.storage.store import DEFAULT_PREFIX, open_store  # noqa: E402

WARM_UP = 200
Metadata = tuple[tuple[str, str], ...] | None  # a call's gRPC metadata


def no_metadata(i: int) -> Metadata:
    return None


def ensure_valgrind() -> None:
    if shutil.which("valgrind"):
        return
    if os.geteuid() != 0:
        raise SystemExit("bench: needs valgrind: apt-get install valgrind")
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "valgrind"], check=True, stdout=subprocess.DEVNULL
    )


def per_call(
    argv: list[str],
    body: bytes,
    calls: int,
    out: Path,
    leases: Callable[[], int],
    metadata: Callable[[int], Metadata] = no_metadata,
) -> tuple[float, int]:
    """Instructions per call of the server started by `argv` + its listen address, and
    the rate-limit leases it took meanwhile (`leases`: how many Redis has counted).
    `metadata(i)`: the gRPC metadata of the i-th call (None: none)."""
    import grpc
    from envoy.service.auth.v3 import external_auth_pb2

    port = free_port()
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--instr-atstart=no",
         *argv, f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO,
    )  # fmt: skip
    try:
        wait_port(port, 300)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            check = channel.unary_unary(
                CHECK_PATH, response_deserializer=external_auth_pb2.CheckResponse.FromString
            )
            for i in range(WARM_UP):
                assert check(body, timeout=60, metadata=metadata(i)).status.code == 0
            control = ["callgrind_control"]
            subprocess.run([*control, "-i", "on", str(proc.pid)], check=True, capture_output=True)
            leased = leases()
            started = time.monotonic()
            for i in range(calls):
                check(body, timeout=60, metadata=metadata(i))
            busy = time.monotonic() - started
            leased = leases() - leased
        subprocess.run([*control, "-d", str(proc.pid)], check=True, capture_output=True)
        time.sleep(busy)  # the same time with no call: what the background threads cost
        subprocess.run([*control, "-d", str(proc.pid)], check=True, capture_output=True)
        time.sleep(1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    totals = {}
    for dump in out.parent.glob(out.name + ".*"):
        found = re.search(r"^totals: (\d+)", dump.read_text(), re.M)
        totals[int(dump.name.rsplit(".", 1)[1])] = int(found.group(1)) if found else 0
    busy_total, idle_total = totals[1], totals[2]
    return (busy_total - idle_total) / calls, leased


SERVERS = ("bare", "floor", "extauthz_on", "extauthz_off", "extauthz_traced")
SAMPLED_EVERY = 100  # extauthz_traced: 1 % of its calls have a sampled parent, as Envoy's
# `random_sampling: 1` sends them (the others an unsampled traceparent: Envoy's span, not kept)


def traceparent(i: int) -> Metadata:
    """The metadata Envoy's tracer sends with the i-th ext_authz call."""
    flags = "01" if i % SAMPLED_EVERY == 0 else "00"
    return (("traceparent", f"00-{i + 1:032x}-{i + 1:016x}-{flags}"),)


class Collector:
    """An OTLP/gRPC receiver in this process, counting the spans it is sent."""

    def __init__(self) -> None:
        from concurrent import futures

        import grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        self.spans = 0
        response: bytes = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()

        def export(request: bytes, context: Any) -> bytes:
            parsed = trace_service_pb2.ExportTraceServiceRequest.FromString(request)
            self.spans += sum(
                len(scope.spans) for spans in parsed.resource_spans for scope in spans.scope_spans
            )
            return response

        handler = grpc.method_handlers_generic_handler(
            "opentelemetry.proto.collector.trace.v1.TraceService",
            {"Export": grpc.unary_unary_rpc_method_handler(export)},
        )
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()


def run(calls: int, only: tuple[str, ...] = SERVERS) -> dict[str, Any]:
    """Instructions per Check of each server in `only`, and their ratios to bare (when bare
    is among them)."""
    ensure_valgrind()
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="extauthz-instr-") as tmp:
        work = Path(tmp)
        redis_port = free_port()
        redis = subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--save", "", "--notify-keyspace-events",
             REQUIRED_FLAGS], stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_port(redis_port)
            url = f"redis://127.0.0.1:{redis_port}/0"
            store = open_store(url, DEFAULT_PREFIX, 5.0)
            sync(store, parse_policy("version: 1\nroutes:\n  bench: {access: protected}\n"))
            plain = tokens.create(store, ["bench"], now=time.time()).token
            limited = tokens.create(
                store, ["bench"], now=time.time(), rate_limit=RateLimit(10**9, "m")
            ).token
            serve = [py, "-m", "extauthz", "serve", "--workers", "1", "--redis-url", url,
                     "--log-level", "warning", "--metrics-listen", ""]  # fmt: skip
            collector = Collector()
            otlp = f"grpc://127.0.0.1:{collector.port}"
            servers = {
                "bare": ([py, "bench/bare_check.py", "--listen"], plain),
                "floor": ([py, "bench/empty_check.py", "--redis-url", url, "--listen"], plain),
                "extauthz_on": ([*serve, "--listen"], limited),
                "extauthz_off": ([*serve, "--usage-flush", "0", "--listen"], plain),
                "extauthz_traced": (
                    [*serve, "--usage-flush", "0", "--otlp-endpoint", otlp, "--listen"],
                    plain,
                ),
            }
            redis_client: Any = store.client

            def leases() -> int:  # INCRBYs: one a lease (runtime/limiter.py)
                stats = redis_client.info("commandstats").get("cmdstat_incrby", {})
                return int(stats.get("calls", 0))

            metadata = {"extauthz_traced": traceparent}
            measured = {
                name: per_call(
                    argv,
                    check_request_frame(token)[5:],
                    calls,
                    work / name,
                    leases,
                    metadata.get(name, no_metadata),
                )
                for name, (argv, token) in servers.items()
                if name in only
            }
            collector.server.stop(0)
            counts = {name: m[0] for name, m in measured.items()}
        finally:
            redis.send_signal(signal.SIGTERM)
            redis.wait()
    bare = counts.get("bare")
    return {
        "date": time.strftime("%Y-%m-%d"),
        "calls": calls,
        "instructions_per_call": {k: round(v) for k, v in counts.items()},
        "bare_over": {k: round(bare / v, 4) for k, v in counts.items()} if bare else {},
        # valgrind runs the server ~50 times slower, so a lease (sized to 0.25 s of the
        # rate it sees) covers ~50 times fewer calls than at full speed: its Redis round
        # trip weighs that much more per call in extauthz_on's count
        "leases": measured["extauthz_on"][1] if "extauthz_on" in measured else 0,
        "spans": collector.spans,  # extauthz_traced's, exported (a span per sampled call)
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument(
        "--servers", nargs="+", choices=SERVERS, default=list(SERVERS),
        help="count only these (the ratios are to bare: without it, none)",
    )  # fmt: skip
    args = parser.parse_args()
    data = run(args.calls, tuple(args.servers))
    print(f"| {'server':<14} | {'instructions/call':>17} | {'bare / it':>9} |")
    print(f"|{'-' * 16}|{'-' * 18}:|{'-' * 10}:|")
    for name, count in data["instructions_per_call"].items():
        ratio = data["bare_over"].get(name)
        print(f"| {name:<14} | {count:>17,} | {'-' if ratio is None else f'{ratio:.3f}':>9} |")
    print(f"({args.calls} sequential calls each, after {WARM_UP} to warm up)")
    print(
        f"extauthz_on took {data['leases']} rate-limit leases: one per "
        f"{args.calls / max(1, data['leases']):,.0f} calls (at full speed, one per thousands)"
    )
    if "extauthz_traced" in data["instructions_per_call"]:
        print(f"extauthz_traced exported {data['spans']} spans (one per sampled call)")
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=2))


if __name__ == "__main__":
    main()
