"""Counting at scale: many concurrent LLM streams through the real Envoy (its Lua filter and
usage log) and one extauthz process, each counted exactly (docs/llm.md#figures).

A model server and a client written in C (`bench/sseload.c`, built here with the system's C
compiler) so that the load costs the machine little: `--streams` concurrent chat streams
(one opened every `--ramp-us`), each of `--chunks` SSE chunks a `--pace-ms` apart, ending
with its usage chunk (11 prompt tokens, chunks - 2 completion tokens). Reported: streams
that ended, chunks a second through Envoy, time to first chunk, extauthz's and Envoy's CPU
(seconds and per response), whether the tokens extauthz charged equal the streams' usage
to the token, and the latency of Checks on an unrelated route (gRPC to extauthz, as Envoy
calls it) idle and while the streams run.

    python bench/llm_scale.py [--streams 1000] [--chunks 100] [--pace-ms 50] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
from envoy.service.auth.v3 import external_auth_pb2_grpc  # noqa: E402

from bench.run import cpu_seconds  # noqa: E402
from extauthz.admin import tokens  # noqa: E402
from extauthz.config import Settings  # noqa: E402
from extauthz.dev.ports import free_port, port_open  # noqa: E402
from extauthz.runtime.envoy_check import CheckRequest  # noqa: E402
from tests.support.procs import envoy_in_front, local_stack, stop, wait_for  # noqa: E402


def build(work: Path) -> Path:
    """bench/sseload.c, compiled."""
    binary = work / "sseload"
    subprocess.run(
        ["cc", "-O2", "-o", str(binary), str(REPO / "bench/sseload.c")],
        check=True,
        capture_output=True,
    )
    return binary


def _checks(stack: Any, until: float, out: list[float]) -> None:
    """Checks for the public `healthz` route (GET /ping) to the stack's extauthz over its
    mutual TLS, one every 10 ms until `until`: their latencies (ms) into `out`."""
    tls = stack.client_tls
    credentials = grpc.ssl_channel_credentials(
        Path(tls.ca).read_bytes(), Path(tls.key).read_bytes(), Path(tls.cert).read_bytes()
    )
    channel = grpc.secure_channel(
        f"127.0.0.1:{stack.ports.extauthz.port}",
        credentials,
        options=[("grpc.ssl_target_name_override", tls.server_name)],
    )
    stub = external_auth_pb2_grpc.AuthorizationStub(channel)
    request = CheckRequest()
    http = request.attributes.request.http
    http.method, http.path, http.host = "GET", "/ping", "models.example.com"
    http.headers.update({":method": "GET", ":path": "/ping", "x-request-id": "bench"})
    request.attributes.context_extensions["route"] = "healthz"
    try:
        while time.perf_counter() < until:
            started = time.perf_counter()
            stub.Check(request, timeout=5)
            out.append((time.perf_counter() - started) * 1000)
            time.sleep(0.01)
    finally:
        channel.close()


def _checks_after(stack: Any, delay: float, seconds: float, out: list[float]) -> None:
    time.sleep(delay)
    _checks(stack, time.perf_counter() + seconds, out)


def _quantiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values) or [float("nan")]
    return {"p50": ordered[len(ordered) // 2], "p99": ordered[int((len(ordered) - 1) * 0.99)]}


def run(streams: int, chunks: int, pace_ms: int, ramp_us: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sseload = build(work)
        upstream_port = free_port()
        upstream = subprocess.Popen(
            [str(sseload), "server", str(upstream_port), str(pace_ms)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for(lambda: port_open(upstream_port), 10, "the C model server")
            settings = Settings(usage_flush=0.5, auth_failure_burst=0)
            with (
                local_stack(work / "stack", settings) as stack,
                envoy_in_front(stack, work, model_http=upstream_port, ready=False) as port,
            ):
                time.sleep(1.0)  # (Envoy's connections to extauthz up)
                made = tokens.create(stack.store(), ["llm"], now=time.time())
                assert stack.extauthz.proc is not None
                extauthz = stack.extauthz.proc.pid
                envoy = _envoy_pid(work)
                idle: list[float] = []
                _checks(stack, time.perf_counter() + 2.0, idle)
                busy: list[float] = []
                # (from when the streams are open to a second before the first ends)
                probe_from = streams * ramp_us / 1e6 + 0.5
                probe = threading.Thread(
                    target=_checks_after,
                    args=(stack, probe_from, max(0.5, chunks * pace_ms / 1000 - 1.5), busy),
                )
                probe.start()
                before = (cpu_seconds(extauthz), cpu_seconds(envoy), time.perf_counter())
                seconds = streams * ramp_us / 1e6 + chunks * pace_ms / 1000 + 60
                out = subprocess.run(
                    [str(sseload), "client", str(port), str(streams), str(chunks),
                     str(int(seconds)), made.token, str(ramp_us)],
                    check=True, capture_output=True, text=True,
                )  # fmt: skip
                wall = time.perf_counter() - before[2]
                probe.join()
                client = json.loads(out.stdout)
                extauthz_cpu = cpu_seconds(extauthz) - before[0]
                envoy_cpu = cpu_seconds(envoy) - before[1]

                def charged() -> dict[str, int]:
                    day = tokens.usage(stack.store(), made.record.id, 1, time.time())["days"][0]
                    return dict(day.get("models", {}).get("demo-small", {}))

                expected: dict[str, Any] = {
                    "requests": client["ok"],
                    "prompt_tokens": 11 * client["ok"],
                    "completion_tokens": (chunks - 2) * client["ok"],
                }
                policy = stack.store().load_policy()
                price = policy.prices.of("demo-small") if policy is not None else None
                if price is not None:  # (the example policy prices it: usage has its cost)
                    expected["cost_usd"] = price.cost(11, chunks - 2) * client["ok"] / 1e6
                with contextlib.suppress(TimeoutError):  # (reported, not raised)
                    wait_for(lambda: charged() == expected, 20, "every stream charged")
                found = charged()
        finally:
            stop(upstream)
    ok = client["ok"]
    return {
        "streams": streams,
        "chunks_per_stream": chunks,
        "pace_ms": pace_ms,
        "ok": ok,
        "failed": client["fail"],
        "chunks_per_second": ok * chunks / wall,
        "wall_seconds": wall,
        "ttfc_ms": {k: client[f"ttfc_{k}_ms"] for k in ("p50", "p90", "p99")},
        "extauthz_cpu_seconds": extauthz_cpu,
        "extauthz_cpu_ms_per_response": extauthz_cpu / max(ok, 1) * 1000,
        "envoy_cpu_seconds": envoy_cpu,
        "envoy_cpu_us_per_chunk": envoy_cpu / max(ok * chunks, 1) * 1e6,
        "unrelated_check_ms": {"idle": _quantiles(idle), "with_streams": _quantiles(busy)},
        "charged": found,
        "expected": expected,
        "counted_exactly": found == expected,
    }


def _envoy_pid(work: Path) -> int:
    """The second Envoy's process (envoy_in_front's, configured from `work`/envoy.yaml)."""
    config = str(work / "envoy.yaml")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if config.encode() in cmdline and any(b"envoy" in part for part in cmdline[:2]):
            return int(proc.name)
    raise RuntimeError("the second Envoy is not running")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--chunks", type=int, default=100)
    parser.add_argument("--pace-ms", type=int, default=50)
    parser.add_argument("--ramp-us", type=int, default=1000, help="between two streams' starts")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    data = run(args.streams, args.chunks, args.pace_ms, args.ramp_us)
    print(json.dumps(data, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=2))


if __name__ == "__main__":
    main()
