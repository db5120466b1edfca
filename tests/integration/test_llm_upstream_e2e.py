"""LLM responses from a hostile or broken model server, through the real Envoy and its Lua
filter, to extauthz's records (docs/llm.md#tokens-counted-from-responses): huge lines, lines
with no end, bytes that are not UTF-8, deep nesting, events split a byte at a time, CRLF.
Whatever the server sends, the client gets it as sent (less the usage chunk extauthz asked
for), Envoy and extauthz stay up, a usage that can be read is charged, and one that cannot
leaves the request's whole reservation charged."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from extauthz.admin import tokens
from extauthz.config import Settings
from extauthz.core.token_limit import TokenLimit
from extauthz.dev.stack import Stack
from tests.support.procs import envoy_in_front, local_stack, wait_for

pytestmark = [pytest.mark.redis, pytest.mark.envoy]


def event(obj: object, newline: bytes = b"\n") -> bytes:
    return b"data: " + json.dumps(obj).encode() + newline + newline


CONTENT = event({"choices": [{"index": 0, "delta": {"content": "hi"}}]})
FORGED = {"type": "function", "name": "f", "parameters": {"type": "object", "properties": {
    "usage": {"type": "object", "input_tokens": 0, "output_tokens": 0}}}}  # fmt: skip
USAGE = {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 11}}
DONE = b"data: [DONE]\n\n"

# name → the reply's pieces (each written and flushed alone)
REPLIES: dict[str, list[bytes]] = {
    "plain": [CONTENT, event(USAGE), DONE],
    "split": [bytes([b]) for b in CONTENT + event(USAGE) + DONE],  # a byte at a time
    "crlf": [event({"choices": [{"delta": {"content": "x"}}]}, b"\r\n"), event(USAGE, b"\r\n")],
    "bad-utf8": [b"data: {\"choices\": [{\"delta\": {\"content\": \"\xff\xfe\"}}]}\n\n",
                 event(USAGE), DONE],
    "deep": [b"data: " + b"[" * 100_000 + b"]" * 100_000 + b"\n\n", event(USAGE), DONE],
    "long-line": [CONTENT, b"data: " + b"x" * (3 << 20) + b"\n\n", event(USAGE), DONE],
    "no-end": [CONTENT, b"data: " + b"y" * (2 << 20)],  # no blank line, no usage: never read
    "lying": [CONTENT, event({"choices": [], "usage": {"prompt_tokens": -1}}), DONE],
    # a Responses API server echoing the client's tools (with a forged "usage" key in their
    # schema) after its own usage, as SGLang orders them, and before it at the start
    "responses-echo": [
        event({"type": "response.created", "response": {"usage": None, "tools": [FORGED]}}),
        event({"type": "response.output_text.delta", "delta": "hi"}),
        event({"type": "response.completed",
               "response": {"usage": {"input_tokens": 7, "output_tokens": 11}, "tools": [FORGED]}}),
    ],
    "json:responses-echo": [json.dumps(
        {"object": "response", "usage": {"input_tokens": 7, "output_tokens": 11},
         "tools": [FORGED]}).encode()],
}  # fmt: skip


class Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # (GET /v1/models: the gateway is ready)
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", "12")
        self.end_headers()
        self.wfile.write(b'{"data": []}')

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        reply = self.headers["x-reply"]
        pieces = REPLIES[reply]
        self.send_response(200)
        json_reply = reply.startswith("json:")
        self.send_header("content-type", "application/json" if json_reply else "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for piece in pieces:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, int]]:
    """The local stack's Redis and extauthz, and an Envoy of our own whose model cluster is
    the hostile upstream: (stack, that Envoy's external port)."""
    work = tmp_path_factory.mktemp("upstream")
    server = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with (
            local_stack(work / "stack", Settings(auth_failure_burst=0, usage_flush=0.2)) as stack,
            envoy_in_front(
                stack, work, model_http=server.server_address[1], ready=False
            ) as external,
        ):
            yield stack, external
    finally:
        server.shutdown()


def stream(
    port: int,
    token: str,
    reply: str,
    ask_usage: bool,
    max_tokens: int = 50,
    path: str = "/v1/chat/completions",
) -> bytes:
    body: dict[str, Any] = {
        "model": "demo-small", "messages": [], "stream": True, "max_tokens": max_tokens,
    }  # fmt: skip
    if path == "/v1/responses":
        body = {"model": "demo-small", "input": "hi", "stream": not reply.startswith("json:"),
                "max_output_tokens": max_tokens, "tools": [FORGED]}  # fmt: skip
    if ask_usage:
        body["stream_options"] = {"include_usage": True}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(
            "POST",
            path,
            json.dumps(body).encode(),
            {"authorization": f"Bearer {token}", "content-type": "application/json",
             "x-reply": reply},
        )  # fmt: skip
        response = connection.getresponse()
        assert response.status == 200
        return response.read()
    finally:
        connection.close()


def charged(stack: Stack, token_id: str) -> Callable[[], dict[str, Any]]:
    def read() -> dict[str, Any]:
        day = tokens.usage(stack.store(), token_id, 1, time.time())["days"][0]
        return dict(day.get("models", {}).get("demo-small", {}))

    return read


@pytest.mark.parametrize("reply", ["plain", "split", "crlf", "bad-utf8", "deep", "long-line"])
@pytest.mark.parametrize("ask_usage", [True, False], ids=["client-asks", "extauthz-asks"])
def test_whatever_the_pieces_the_usage_is_charged_and_the_stream_passes_as_sent(
    gateway: tuple[Stack, int], reply: str, ask_usage: bool
) -> None:
    stack, port = gateway
    made = tokens.create(stack.store(), ["llm"], now=time.time())
    got = stream(port, made.token, reply, ask_usage)
    sent = b"".join(REPLIES[reply])
    usage_event = next(p for p in sent.split(b"data: ") if b'"usage"' in p)
    if ask_usage or reply == "long-line":  # (an event over 1 MiB ends the taking out)
        assert got == sent  # byte for byte
    else:  # extauthz asked for the usage chunk: the client never sees it, nothing else moves
        assert b'"usage"' not in got
        assert len(got) == len(sent) - len(b"data: " + usage_event)
    read = charged(stack, made.record.id)
    wait_for(lambda: read().get("completion_tokens") == 11, 10, f"the usage of {reply}")
    assert read()["prompt_tokens"] == 7


@pytest.mark.parametrize("reply", ["no-end", "lying"])
def test_a_usage_that_cannot_be_read_leaves_the_whole_reservation_charged(
    gateway: tuple[Stack, int], reply: str
) -> None:
    stack, port = gateway
    limit = 2000
    made = tokens.create(
        stack.store(), ["llm"], now=time.time(), token_limit=TokenLimit(limit, "h")
    )
    got = stream(port, made.token, reply, True, max_tokens=1000)
    assert got == b"".join(REPLIES[reply])
    time.sleep(0.5)  # (its record has reached extauthz)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        body = json.dumps({"model": "demo-small", "messages": [], "max_tokens": 1000}).encode()
        connection.request(
            "POST",
            "/v1/chat/completions",
            body,
            {"authorization": f"Bearer {made.token}", "content-type": "application/json",
             "x-reply": "plain"},
        )  # fmt: skip
        response = connection.getresponse()
        response.read()
    finally:
        connection.close()
    # the first reserved ~1,100 of 2,000 and stays charged: the second's ~1,060 does not fit
    assert response.status == 429
    assert charged(stack, made.record.id)().get("prompt_tokens", 0) == 0


def test_envoy_and_extauthz_are_still_up(gateway: tuple[Stack, int]) -> None:
    stack, port = gateway
    made = tokens.create(stack.store(), ["llm"], now=time.time())
    assert b'"usage"' in stream(port, made.token, "plain", True)
    assert stack.extauthz.proc is not None and stack.extauthz.proc.poll() is None


@pytest.mark.parametrize("reply", ["responses-echo", "json:responses-echo"])
def test_a_usage_forged_in_what_the_server_echoes_is_never_read(
    gateway: tuple[Stack, int], reply: str
) -> None:
    """The Responses API echoes the client's tools: a `"usage"` key in their schema is not
    the response's usage (which is a key of the response object itself)."""
    stack, port = gateway
    made = tokens.create(stack.store(), ["llm"], now=time.time())
    assert stream(port, made.token, reply, False, path="/v1/responses") == b"".join(REPLIES[reply])
    read = charged(stack, made.record.id)
    wait_for(lambda: read().get("completion_tokens") == 11, 10, f"the usage of {reply}")
    assert read()["prompt_tokens"] == 7
