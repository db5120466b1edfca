"""A gRPC client that sends CheckRequests shaped as Envoy sends them."""

from __future__ import annotations

from typing import Any

import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc


class CheckClient:
    def __init__(self, port: int) -> None:
        # a connection of its own (channels share one by default): several clients spread
        # over the workers of --workers N as Envoy's connections do
        self.channel = grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        self.stub = external_auth_pb2_grpc.AuthorizationStub(self.channel)

    def check(
        self,
        route: str | None,
        authorization: str | None = None,
        *,
        network: str | None = None,
        headers: dict[str, str] | None = None,
        source: str = "203.0.113.9",
    ) -> Any:
        req = external_auth_pb2.CheckRequest()
        http = req.attributes.request.http
        http.method = "POST"
        http.path = "/predictions/densenet161?x=1"
        http.host = "models.example.com"
        http.headers.update({":method": "POST", ":path": http.path, ":authority": http.host})
        if authorization is not None:
            http.headers["authorization"] = authorization
        http.headers.update(headers or {})
        if route is not None:
            req.attributes.context_extensions["route"] = route
        if network is not None:
            req.attributes.context_extensions["network"] = network
        req.attributes.source.address.socket_address.address = source
        req.attributes.source.address.socket_address.port_value = 50000
        return self.stub.Check(req, timeout=5)

    def status(self, route: str | None, authorization: str | None = None, **kw: Any) -> int:
        """The HTTP status Envoy would answer with (503 for an error response)."""
        resp = self.check(route, authorization, **kw)
        kind = resp.WhichOneof("http_response")
        if kind == "ok_response":
            assert resp.status.code == 0
            return 200
        assert resp.status.code != 0
        return int(getattr(resp, kind).status.code)

    def close(self) -> None:
        self.channel.close()


def upstream_headers(resp: Any) -> dict[str, str]:
    return {h.header.key: h.header.value for h in resp.ok_response.headers}


def reply_headers(resp: Any) -> dict[str, str]:
    kind = resp.WhichOneof("http_response")
    return {h.header.key: h.header.value for h in getattr(resp, kind).headers}
