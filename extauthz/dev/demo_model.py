"""A demo model server for the local stack, docker-compose and tests.

It has the shape of a model API and echoes the headers it received, so a test (or a person
with curl) can see what reached the model: identity headers present, credentials gone.

- HTTP: `GET /ping` → `{"status": "Healthy"}`; an OpenAI-compatible API under `/v1/`
  (demo_llm.py); `POST /predictions/<model>` and any other path → `{"model": ...,
  "method": ..., "path": ..., "headers": {...}}`.
- gRPC: `/extauthz.demo.Predictor/Predict`, raw bytes in, JSON bytes out (the same echo of
  the request metadata), so no generated code is needed on either side.

    python -m extauthz.dev.demo_model --http 127.0.0.1:8000 --grpc 127.0.0.1:8001
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc

from extauthz.config import split_address
from extauthz.dev import demo_llm

GRPC_SERVICE = "extauthz.demo.Predictor"
GRPC_METHOD = f"/{GRPC_SERVICE}/Predict"


class _Handler(BaseHTTPRequestHandler):
    server_version = "demo-model/1"

    def _reply(self, status: int, payload: dict[str, Any], seen_model: str | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        if seen_model is not None:
            self.send_header("x-demo-model-header", seen_model)
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # the CRLF after each chunk
            self.rfile.readline()  # the last chunk's CRLF (no trailers)
            return b"".join(chunks)
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def _llm(self) -> bool:
        """The OpenAI-compatible API (demo_llm.py) under /v1/; False for other paths."""
        path = self.path.split("?")[0]
        seen = self.headers.get("x-extauthz-model", "")
        try:
            if path == "/v1/models" and self.command == "GET":
                self._reply(200, demo_llm.models(), seen)
            elif path == "/v1/chat/completions" and self.command == "POST":
                answer, stream = demo_llm.chat(self._body())
                if stream is None:
                    self._reply(200, answer or {}, seen)
                else:
                    self._sse(stream, seen)
            elif path == "/v1/completions" and self.command == "POST":
                self._reply(200, demo_llm.completion(self._body()), seen)
            elif path == "/v1/embeddings" and self.command == "POST":
                self._reply(200, demo_llm.embeddings(self._body()), seen)
            else:
                return False
        except demo_llm.LlmError as e:
            self._reply(e.status, e.body(), seen)
        return True

    def _sse(self, events: Iterator[bytes], seen: str) -> None:
        # (benches: `x-demo-chunk-delay-ms: N` paces the events as a model generating them)
        raw = self.headers.get("x-demo-chunk-delay-ms", "0")
        delay = min(int(raw), 1000) / 1000 if raw.isdigit() and len(raw) < 5 else 0.0
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("x-demo-model-header", seen)
        self.end_headers()  # (HTTP/1.0: the stream ends when the connection closes)
        for event in events:
            self.wfile.write(event)
            self.wfile.flush()
            if delay:
                time.sleep(delay)

    def _echo(self) -> None:
        if self.path.startswith("/v1/") and self._llm():
            return
        self._body()
        parts = self.path.split("?")[0].strip("/").split("/")
        model = parts[1] if len(parts) > 1 and parts[0] == "predictions" else None
        headers = {k.lower(): v for k, v in self.headers.items()}
        self._reply(
            200, {"model": model, "method": self.command, "path": self.path, "headers": headers}
        )

    def do_GET(self) -> None:
        if self.path == "/ping":
            self._reply(200, {"status": "Healthy"})
        else:
            self._echo()

    do_POST = do_PUT = do_DELETE = _echo

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the stack prints Envoy's view


def _predict(request: bytes, context: grpc.ServicerContext) -> bytes:
    metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
    return json.dumps({"model": "densenet161", "metadata": metadata}).encode()


def _split(address: str) -> tuple[str, int]:
    host, port = split_address(address)
    return host or "127.0.0.1", port


class _HttpServer(ThreadingHTTPServer):
    request_queue_size = 1024  # (the default 5 refuses Envoy's connections under load)


def serve(http_address: str, grpc_address: str) -> None:
    """Run both servers until SIGTERM or SIGINT."""
    http_server = _HttpServer(_split(http_address), _Handler)
    http_server.daemon_threads = True
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    grpc_server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                GRPC_SERVICE, {"Predict": grpc.unary_unary_rpc_method_handler(_predict)}
            ),
        )
    )
    if grpc_server.add_insecure_port(grpc_address) == 0:
        raise SystemExit(f"demo model: cannot listen on {grpc_address}")
    grpc_server.start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    thread = threading.Thread(target=http_server.serve_forever, daemon=True)
    thread.start()
    print(f"demo model: http {http_address}, grpc {grpc_address}", flush=True)
    stop.wait()
    http_server.shutdown()
    grpc_server.stop(1).wait()


def call(target: str, token: str | None = None, timeout: float = 5) -> dict[str, Any]:
    """Call Predict through `target` (e.g. Envoy) with an optional bearer token."""
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    with grpc.insecure_channel(target) as channel:
        predict = channel.unary_unary(GRPC_METHOD)
        reply = predict(b"{}", metadata=metadata, timeout=timeout)
    result: dict[str, Any] = json.loads(reply)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="demo model server (echoes headers)")
    parser.add_argument("--http", default="127.0.0.1:8000")
    parser.add_argument("--grpc", default="127.0.0.1:8001")
    parser.add_argument("--call", metavar="TARGET", help="act as a client: call Predict there")
    parser.add_argument("--token", help="with --call: bearer token sent as metadata")
    args = parser.parse_args()
    if args.call:
        try:
            print(json.dumps(call(args.call, args.token), indent=2))
        except grpc.RpcError as e:
            raise SystemExit(f"{e.code().name}: {e.details()}") from None
    else:
        serve(args.http, args.grpc)
