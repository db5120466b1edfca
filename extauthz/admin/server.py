"""`extauthz admin` as a process: uvicorn serving the API (api.py), guarded against slow
clients.

uvicorn has no deadline for reading a request, nor for a client reading the answer: a
client that sends its headers or its body a byte at a time, or pipelines requests and never
reads what comes back, holds a connection (and the answers buffered for it, and behind a
proxy the proxy's upstream slots) for as long as it likes. Here each request must arrive
whole within `request_timeout` seconds of its first byte (or of the connection's start),
and an answer that fills the connection's send buffer must be read within as long again,
else the connection is closed (its buffer dropped). While `max_connections` connections (or
requests being answered) are held, a request is answered 503 with the API's JSON error
(uvicorn's own limit answers plain text, which the OpenAPI document does not say). Behind
Envoy the console listener also buffers each request whole before it reaches this server
(envoy_config.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import socket
import time
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from extauthz.config import join_address
from extauthz.errors import ConfigError

log = logging.getLogger("extauthz.admin")

BUSY_BODY = json.dumps(
    {
        "error": "unavailable",
        "message": "the server holds as many connections as it may; retry later",
    }
).encode()
BUSY_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(BUSY_BODY)).encode()),
    (b"connection", b"close"),
]


async def busy(scope: Any, receive: Any, send: Any) -> None:
    """The answer past `max_connections`: the API's 503 `unavailable` error, then close."""
    await send({"type": "http.response.start", "status": 503, "headers": BUSY_HEADERS})
    await send({"type": "http.response.body", "body": BUSY_BODY})


class Refusals:
    """Requests answered `busy`, logged at most once per `EVERY` seconds (a flood of them
    is one line, not one per request)."""

    EVERY = 10.0

    def __init__(self) -> None:
        self.unlogged = 0
        self.logged_at = -math.inf

    def note(self, connections: int) -> None:
        self.unlogged += 1
        now = time.monotonic()
        if now - self.logged_at >= self.EVERY:
            log.warning(
                "answered %d request(s) 503: %d connections held (--admin-max-connections)",
                self.unlogged,
                connections,
            )
            self.unlogged, self.logged_at = 0, now


def guarded_protocol(request_timeout: float, max_connections: int) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a deadline on receiving each request, one on the client
    reading an answer it lets pile up, and `busy` past `max_connections` (uvicorn's own
    test: connections open, this one included, or requests being answered, this one not)."""

    refused = Refusals()

    class Guarded(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None
        _write_deadline: asyncio.TimerHandle | None = None

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            app = self.app

            async def limited(scope: Any, receive: Any, send: Any) -> None:
                # (this request's task is in self.tasks already)
                if len(self.connections) >= max_connections or len(self.tasks) > max_connections:
                    refused.note(len(self.connections))
                    await busy(scope, receive, send)
                else:
                    await app(scope, receive, send)

            self.app = limited

        def pause_writing(self) -> None:  # (the send buffer is over its high-water mark)
            super().pause_writing()
            if self._write_deadline is None:
                self._write_deadline = self.loop.call_later(request_timeout, self._not_read)

        def resume_writing(self) -> None:
            super().resume_writing()
            if self._write_deadline is not None:
                self._write_deadline.cancel()
                self._write_deadline = None

        def _not_read(self) -> None:
            self._write_deadline = None
            self.transport.abort()  # (what it did not read is dropped, not kept for it)

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._deadline is None and (self.cycle is None or self.cycle.response_complete):
                self._arm()  # the first bytes of the next request on this connection
            super().data_received(data)
            cycle = self.cycle
            if cycle is not None and not cycle.more_body and self._deadline is not None:
                self._deadline.cancel()  # all of it arrived
                self._deadline = None

        def connection_lost(self, exc: Exception | None) -> None:
            for timer in (self._deadline, self._write_deadline):
                if timer is not None:
                    timer.cancel()
            self._deadline = self._write_deadline = None
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._deadline = self.loop.call_later(request_timeout, self._too_slow)

        def _too_slow(self) -> None:
            self._deadline = None
            cycle = self.cycle
            if cycle is None or cycle.response_complete or cycle.more_body:
                self.transport.close()  # (a request being answered is left alone)

    return Guarded


def run(
    app: FastAPI,
    host: str,
    port: int,
    trusted_proxies: list[str],
    request_timeout: float,
    max_connections: int,
) -> None:
    """Serve `app` until stopped. X-Forwarded-For is read only from `trusted_proxies`.
    ConfigError when the address cannot be listened on (before anything is served)."""
    sock = listen(host, port)
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": "warning",
        "proxy_headers": bool(trusted_proxies),
        "forwarded_allow_ips": trusted_proxies or [],  # (uvicorn's default trusts 127.0.0.1)
        "server_header": False,
        "http": guarded_protocol(request_timeout, max_connections),
        "timeout_keep_alive": min(5.0, request_timeout),
    }
    uvicorn.Server(uvicorn.Config(app, **options)).run(sockets=[sock])


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port as uvicorn binds one (SO_REUSEADDR), bound here so that a
    busy port is one line naming it (uvicorn logs the OSError and exits 3)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(
            f"cannot listen on {join_address(host, port)} ({e.strerror or e}): stop what holds "
            "it, or give --admin-listen another host:port"
        ) from None
    return sock
