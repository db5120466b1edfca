"""What reading an LLM request's model from its body costs per Check
(docs/llm.md#reading-the-body-costs-little).

Times the real gRPC request reader and handler (as bench/decision_path.py does) on three
requests with a valid token, measured alternately in each round: a body-less Check on a
protected route, and Checks on an `api: openai` route carrying a chat request of 1 KB and
of 100 KB (the model read from the body: parsed whole when small, scanned when large). The
added cost is each LLM row minus the body-less one in the same round; the figure to meet
is < 100 µs for 100 KB.

    python bench/llm_body.py [--calls 20000] [--rounds 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.decision_path import authorizer  # noqa: E402
from extauthz.runtime.envoy_check import (  # noqa: E402
    CheckRequest,
    CheckResponse,
    check_handler,
    check_input_reader,
)

POLICY = """
version: 1
routes:
  plain: {access: protected}
  llm: {access: protected, api: openai, models: [llama-3-8b]}
"""


def chat_body(size: int) -> bytes:
    """An OpenAI chat request of about `size` bytes (a long user message)."""
    head = {"model": "llama-3-8b", "stream": True, "max_tokens": 256}
    messages = [{"role": "system", "content": "You are a helpful assistant."}]
    base = len(json.dumps({**head, "messages": [*messages, {"role": "user", "content": ""}]}))
    words = ("Explain how transformers attend to earlier tokens. " * (size // 40 + 1))[
        : size - base
    ]
    return json.dumps(
        {**head, "messages": [*messages, {"role": "user", "content": words}]}
    ).encode()


def check_request(route: str, token: str, body: bytes | None) -> bytes:
    request = CheckRequest()
    http = request.attributes.request.http
    http.method, http.path, http.host = "POST", "/v1/chat/completions", "models.example.com"
    http.headers.update(
        {
            ":method": "POST",
            ":path": http.path,
            ":authority": http.host,
            "authorization": f"Bearer {token}",
            "content-type": "application/json",
        }
    )
    if body is not None:
        http.raw_body = body
    request.attributes.context_extensions["route"] = route
    request.attributes.source.address.socket_address.address = "203.0.113.9"
    data: bytes = request.SerializeToString()
    return data


def world() -> tuple[Callable[[bytes], Any], dict[str, bytes]]:
    auth, token = authorizer(POLICY, ["plain", "llm"])
    read, handler = check_input_reader(), check_handler(auth)
    requests = {
        "body-less Check": check_request("plain", token, None),
        "LLM Check, 1 KB body": check_request("llm", token, chat_body(1_000)),
        "LLM Check, 100 KB body": check_request("llm", token, chat_body(100_000)),
    }

    def call(data: bytes) -> Any:
        return handler(read(data), None)

    for name, data in requests.items():  # each is allowed (status OK), then warm
        answer = CheckResponse.FromString(call(data))
        assert answer.status.code == 0 and answer.HasField("ok_response"), (name, answer)
        for _ in range(2_000):
            call(data)
    return call, requests


def per_call_us(call: Callable[[bytes], Any], data: bytes, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        call(data)
    return (time.perf_counter() - started) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    call, requests = world()
    times: dict[str, list[float]] = {name: [] for name in requests}
    for _ in range(args.rounds):
        for name, data in requests.items():  # alternated: the same noise for every row
            times[name].append(per_call_us(call, data, args.calls))
    median = {name: statistics.median(values) for name, values in times.items()}
    base = median["body-less Check"]
    rows = {
        name: {
            "us_per_call": round(us, 2),
            "added_us": round(us - base, 2),
            "ratio": round(us / base, 2),
        }
        for name, us in median.items()
    }
    print("| request | µs per Check | added | ratio to body-less |\n|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['us_per_call']} | {row['added_us']} | {row['ratio']} |")
    sizes = {name: len(data) for name, data in requests.items()}
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "request_bytes": sizes}, indent=2))


if __name__ == "__main__":
    main()
