"""LLM token limits across processes (docs/llm.md#token-limits-and-budgets): reservations never
let a window's tokens pass the limit, most of the limit is used under twice the load, and the
warm path makes almost no Redis calls.

Starts a real redis-server and P `extauthz serve` processes, and plays Envoy against them
over gRPC: S client threads per process send Checks with an OpenAI chat body (`max_tokens`
set) to their process; an allowed request "generates" for a while, then its response's
usage goes through an ext_proc stream to any of the P processes (as Envoy's may: ext_authz
and ext_proc calls are separate), which settles the reservation. Offered load is open-loop,
in tokens: `--load` times the limit per window. A request is counted in the window it was
admitted in; the window's total is the sum of its requests' real usage.

    python bench/llm_limits.py [--processes 3] [--streams 8] [--limit 2000] [--windows 2]
                               [--load 2] [--budget USD] [--json FILE]

`--budget 1` holds the token to a budget of $1/m instead (docs/llm.md#budgets-in-dollars):
the model is priced at PRICE (USD per million input, output and cached input tokens), the
clients report cached prompt tokens, and windows are summed in micro-dollars of real usage.

`--hostile` plays clients that try every way around a limit instead (no cap, a `null` cap,
`n`, a stream that hides its usage, coerced or case-folded caps, a model in the query); the
simulated model server is lenient (it writes as much as the cap it reads allows: 2,000
tokens an answer) and a request is counted by what it served, not by what was reported.

Then a warm-path row: a limit nobody reaches (10^9/d), the same clients unthrottled for
`--warm-seconds`: Redis commands per LLM request (Redis's own count of commands processed,
less what the servers send when idle for as long: polls and heartbeats).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
from envoy.service.auth.v3 import external_auth_pb2_grpc  # noqa: E402
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc_pb  # noqa: E402
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc  # noqa: E402

from extauthz.admin import tokens  # noqa: E402
from extauthz.admin.sync import sync  # noqa: E402
from extauthz.core.budget import Budget  # noqa: E402
from extauthz.core.llm import apply_splices  # noqa: E402
from extauthz.core.policy import parse_policy  # noqa: E402
from extauthz.core.prices import Price  # noqa: E402
from extauthz.core.token_limit import TokenLimit  # noqa: E402
from extauthz.runtime.envoy_check import CheckRequest  # noqa: E402
from extauthz.runtime.ext_proc import EXT_AUTHZ_NAMESPACE  # noqa: E402
from extauthz.storage.store import open_store  # noqa: E402
from tests.support.procs import RedisServer, extauthz_serve  # noqa: E402

POLICY = "version: 1\nroutes:\n  llm: {access: protected, api: openai}\n"
PRICE = Price(10_000_000, 30_000_000, 5_000_000)  # $10, $30, $5 per million tokens
PRICES = "prices:\n  demo: {input: 10, output: 30, cached_input: 5}\n"
WORDS = [
    "Explain",
    "how",
    "a",
    "transformer",
    "attends",
    "to",
    "earlier",
    "tokens",
    "in",
    "one",
    "short",
    "answer",
    "please",
]


def chat_body(rng: random.Random) -> tuple[bytes, int]:
    """A chat request with a prompt of 20-60 words and `max_tokens` 32-128."""
    prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60)))
    cap = rng.randint(32, 128)
    body = {"model": "demo", "messages": [{"role": "user", "content": prompt}], "max_tokens": cap}
    return json.dumps(body).encode(), cap


TRICKS = ("no_cap", "null_cap", "choices", "hidden_usage", "coerced", "case_key", "query")
LONG_ANSWER = 2000  # tokens the lenient server writes for a hostile prompt, cap allowing


def hostile_body(rng: random.Random) -> tuple[bytes, str, str]:
    """A request trying one of TRICKS: (body, path, trick)."""
    trick = rng.choice(TRICKS)
    prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60)))
    body: dict[str, Any] = {"model": "demo", "messages": [{"role": "user", "content": prompt}]}
    cap = rng.randint(32, 128)
    path = "/v1/chat/completions"
    if trick == "null_cap":
        body["max_tokens"] = None
    elif trick == "choices":
        body.update(max_tokens=cap, n=3)
    elif trick == "hidden_usage":
        body.update(max_tokens=cap, stream=True, stream_options={"include_usage": False})
    elif trick == "coerced":
        body.update(max_tokens=float(cap))
    elif trick == "case_key":
        body.update(max_tokens=cap, MAX_TOKENS=100_000)
    elif trick == "query":
        body["max_tokens"] = cap
        path += "?max_tokens=100000&model=demo-large"
    return json.dumps(body).encode(), path, trick


def served_by_lenient_server(body: bytes, edit: str) -> int:
    """What a lenient server writes for a body extauthz let through, edited as the decision
    asked (`edit`: its splices, applied as Envoy would): as much as the cap it reads allows
    (the last of repeated keys, as Python's json reads them), for each of its `n` choices."""
    edited = apply_splices(body, edit) if edit else body
    assert edited is not None, "the decision's edit does not fit its body"
    fields = json.loads(edited)
    prompt = len(fields["messages"][0]["content"].split()) + 4
    cap = fields.get("max_tokens")
    answer = LONG_ANSWER if cap is None else min(LONG_ANSWER, int(cap))
    return prompt + answer * int(fields.get("n") or 1)


def check_request(token: str, body: bytes, path: str = "/v1/chat/completions") -> Any:
    request = CheckRequest()
    http = request.attributes.request.http
    http.method, http.path, http.host = "POST", path, "llm.example.com"
    http.headers.update(
        {":method": "POST", "authorization": f"Bearer {token}", "content-type": "application/json"}
    )
    http.raw_body = body
    request.attributes.context_extensions["route"] = "llm"
    request.attributes.source.address.socket_address.address = "127.0.0.1"
    return request


def response_messages(
    metadata: Any, usage: dict[str, Any] | None, chunks: int = 1
) -> Iterator[Any]:
    """What Envoy's ext_proc filter sends for a JSON response (observability mode): the
    headers with ext_authz's dynamic metadata, then the body in `chunks` pieces (without a
    `usage` when None)."""
    context = ext_proc_pb.ProcessingRequest(observability_mode=True)
    context.metadata_context.filter_metadata[EXT_AUTHZ_NAMESPACE].CopyFrom(metadata)
    headers = context.response_headers.headers.headers
    headers.add(key=":status", raw_value=b"200")
    headers.add(key="content-type", raw_value=b"application/json")
    yield context
    reply: dict[str, Any] = {"object": "chat.completion"}
    if usage is not None:
        reply["usage"] = usage
    body = json.dumps(reply).encode()
    step = -(-len(body) // chunks)
    for i in range(0, len(body), step):
        message = ext_proc_pb.ProcessingRequest(observability_mode=True)
        message.response_body.body = body[i : i + step]
        message.response_body.end_of_stream = i + step >= len(body)
        yield message


@dataclass
class Result:
    admitted: list[tuple[float, int]] = field(default_factory=list)  # (admitted at, used)
    tricks: dict[str, int] = field(default_factory=dict)  # hostile: admitted per trick
    refused: int = 0
    errors: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class Cluster:
    """Redis and P extauthz processes, a token with `limit`, gRPC stubs to every process."""

    def __init__(self, work: Path, processes: int, limit: str, budget: bool = False) -> None:
        self.stack = ExitStack()
        self.redis = RedisServer(work)
        self.redis.start()
        self.stack.callback(self.redis.stop)
        store = open_store(self.redis.url, "extauthz:", 2.0)
        sync(store, parse_policy(POLICY + (PRICES if budget else "")))
        # budget: usage is counted in micro-dollars at PRICE
        self.price = PRICE if budget else None
        self.token = tokens.create(
            store, ["llm"], now=time.time(),
            token_limit=None if budget else TokenLimit.parse(limit),
            budget=Budget.parse(limit) if budget else None,
        ).token  # fmt: skip
        self.checks, self.processors = [], []
        for i in range(processes):
            port, _ = self.stack.enter_context(
                extauthz_serve(self.redis.url, work / f"serve{i}.log", "--log-level", "warning")
            )
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            self.stack.callback(channel.close)
            self.checks.append(external_auth_pb2_grpc.AuthorizationStub(channel))
            self.processors.append(external_processor_pb2_grpc.ExternalProcessorStub(channel))

    def commands(self) -> int:
        info = self.redis.cli("info", "stats")
        line = next(x for x in info.splitlines() if x.startswith("total_commands_processed:"))
        return int(line.split(":")[1])

    def close(self) -> None:
        self.stack.close()


def client(
    cluster: Cluster,
    me: int,
    until: float,
    interval: float,
    generation: float,
    result: Result,
    seed: int,
    hostile: bool = False,
) -> None:
    """One client thread: a request every `interval` seconds (exponential gaps; 0: back to
    back) to process `me`; allowed ones settle `generation` seconds later at any process.
    `hostile`: requests from hostile_body, served by a lenient server."""
    rng = random.Random(seed)
    check = cluster.checks[me]
    next_at = time.time()
    while True:
        if interval:
            next_at += rng.expovariate(1 / interval)
            delay = min(next_at, until) - time.time()
            if delay > 0:
                time.sleep(delay)
        now = time.time()
        if now >= until:
            return
        trick, path = "", "/v1/chat/completions"
        if hostile:
            body, path, trick = hostile_body(rng)
        else:
            body, cap = chat_body(rng)
        try:
            answer = check.Check(check_request(cluster.token, body, path), timeout=5)
        except grpc.RpcError:
            with result.lock:
                result.errors += 1
            continue
        if not answer.HasField("ok_response"):
            with result.lock:
                result.refused += 1
            continue
        prompt = len(json.loads(body)["messages"][0]["content"].split()) + 4
        if hostile:
            used = served_by_lenient_server(
                body, answer.dynamic_metadata.fields["edit"].string_value
            )
            usage: dict[str, Any] | None = {
                "prompt_tokens": prompt,
                "completion_tokens": used - prompt,
            }
            if trick == "hidden_usage":
                usage = None
        else:
            usage = {"prompt_tokens": prompt, "completion_tokens": rng.randint(cap // 2, cap)}
            used = prompt + usage["completion_tokens"]
        if cluster.price is not None and usage is not None:
            cached = rng.randint(0, prompt // 2)
            usage["prompt_tokens_details"] = {"cached_tokens": cached}
            used = cluster.price.cost(prompt, used - prompt, cached)
        elif cluster.price is not None:  # (hidden usage: charged its reservation, counted so)
            used = cluster.price.cost(prompt, used - prompt)
        time.sleep(generation)
        processor = rng.choice(cluster.processors)
        for _ in processor.Process(response_messages(answer.dynamic_metadata, usage), timeout=5):
            pass
        with result.lock:
            result.admitted.append((now, used))
            result.tricks[trick] = result.tricks.get(trick, 0) + 1


def drive(
    cluster: Cluster,
    streams: int,
    seconds: float,
    interval: float,
    generation: float,
    hostile: bool = False,
) -> Result:
    result = Result()
    until = time.time() + seconds
    threads = [
        threading.Thread(
            target=client,
            args=(cluster, p, until, interval, generation, result, p * 1000 + s, hostile),
        )
        for p in range(len(cluster.checks))
        for s in range(streams)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return result


def per_window(result: Result, seconds: int) -> dict[int, int]:
    totals: dict[int, int] = {}
    for at, used in result.admitted:
        totals[int(at // seconds)] = totals.get(int(at // seconds), 0) + used
    return totals


def reservation_row(
    work: Path,
    processes: int,
    streams: int,
    limit: int,
    windows: int,
    load: float,
    hostile: bool = False,
    budget: float | None = None,
) -> dict[str, Any]:
    """P processes x S streams against `limit`/m (or a budget of $`budget`/m) for `windows`
    whole minutes at `load` times the limit: the tokens (micro-dollars) of each window, the
    most over the limit, the least used."""
    notation = f"{limit}/m" if budget is None else f"${budget}/m"
    cluster = Cluster(work, processes, notation, budget is not None)
    try:
        mean_used = 4 + 40 + 80 * 0.75  # (prompt words + template, completion ~ 3/4 of the cap)
        if hostile:
            mean_used = 600  # (a mix of refused tricks and answers up to the cap they get)
        if budget is not None:  # (in micro-dollars: prompt, 1/4 cached, and completion)
            limit = Budget.parse(notation).count
            mean_used = PRICE.cost(44, int(mean_used) - 44, 11)
        requests_per_second = load * limit / 60 / mean_used
        interval = processes * streams / requests_per_second
        time.sleep(60 - time.time() % 60)  # from a window's start
        result = drive(cluster, streams, windows * 60 - 0.5, interval, 0.2, hostile)
    finally:
        cluster.close()
    totals = per_window(result, 60)
    return {
        "processes": processes,
        "streams": streams,
        "limit": notation,
        "unit": "tokens" if budget is None else "micro-dollars",
        "load": load,
        "hostile": hostile,
        "admitted_per_trick": result.tricks,
        "window_totals": sorted(totals.values()),
        "overshoot": max(0, max(totals.values(), default=0) - limit),
        "least_used": min(totals.values(), default=0) / limit,
        "admitted": len(result.admitted),
        "refused": result.refused,
        "errors": result.errors,
    }


def warm_row(
    work: Path, processes: int, streams: int, seconds: float, budget: bool = False
) -> dict[str, Any]:
    """Unthrottled clients under a limit (or budget) nobody reaches: Redis commands per LLM
    request."""
    cluster = Cluster(work, processes, "1000000/d" if budget else "1000000000/d", budget)
    try:
        time.sleep(1.0)
        before = cluster.commands()
        time.sleep(seconds)
        idle = cluster.commands() - before
        before = cluster.commands()
        result = drive(cluster, streams, seconds, 0.0, 0.0)
        busy = cluster.commands() - before
    finally:
        cluster.close()
    requests = len(result.admitted)
    return {
        "requests": requests,
        "requests_per_second": requests / seconds,
        "redis_commands": busy,
        "redis_commands_idle": idle,
        "redis_commands_per_request": (busy - idle) / max(requests, 1),
        "refused": result.refused,
        "errors": result.errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--limit", type=int, default=2000)
    parser.add_argument("--windows", type=int, default=2)
    parser.add_argument("--load", type=float, default=2.0)
    parser.add_argument("--warm-seconds", type=float, default=10.0)
    parser.add_argument("--hostile", action="store_true", help="clients that try every trick")
    parser.add_argument("--budget", type=float, help="a budget of $BUDGET/m instead")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    priced = args.budget is not None
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        warm = warm_row(work, args.processes, args.streams, args.warm_seconds, priced)
        limited = reservation_row(
            work, args.processes, args.streams, args.limit, args.windows, args.load, args.hostile,
            args.budget,
        )  # fmt: skip
    data = {"reservation": limited, "warm": warm}
    print(json.dumps(data, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=2))


if __name__ == "__main__":
    main()
