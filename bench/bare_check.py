"""The bare floor: a plain grpcio sync server (2 handler threads, SO_REUSEPORT) whose Check
parses the request and returns a fixed allow carrying the same work for Envoy as
extauthz's: three `x-extauthz-*` headers set with OVERWRITE_IF_EXISTS_OR_ADD and
`authorization` removed. No health service, no background threads, no metrics, no policy:
what any Python gRPC ext_authz server costs at the least. Used by bench/run.py.

    python bench/bare_check.py --listen 127.0.0.1:9201
"""

from __future__ import annotations

import argparse
import signal
import threading
from concurrent import futures
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2
from google.rpc import code_pb2, status_pb2

from extauthz.core.headers import IDENTITY_HEADERS

HEADERS = tuple(zip(IDENTITY_HEADERS, ("token:tok_0123456789ab", "bench", ""), strict=True))


def fixed_allow() -> bytes:
    """The CheckResponse bytes, made once."""
    response = external_auth_pb2.CheckResponse(status=status_pb2.Status(code=code_pb2.OK))
    ok = response.ok_response
    for key, value in HEADERS:
        ok.headers.append(
            base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key=key, value=value),
                append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
                keep_empty_value=True,
            )
        )
    ok.headers_to_remove.append("authorization")
    return bytes(response.SerializeToString())


ALLOW = fixed_allow()


def check(request: Any, context: Any) -> bytes:
    return ALLOW


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=args.threads),
        options=[("grpc.so_reuseport", 1)],
    )
    handler = grpc.unary_unary_rpc_method_handler(
        check,
        request_deserializer=external_auth_pb2.CheckRequest.FromString,
        response_serializer=bytes,
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "envoy.service.auth.v3.Authorization", {"Check": handler}
            ),
        )
    )
    server.add_insecure_port(args.listen)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    stop.wait()
    server.stop(1)


if __name__ == "__main__":
    main()
