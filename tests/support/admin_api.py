"""The management API as its clients see it: `extauthz admin` as a real process, a client
that checks every exchange against the OpenAPI document the server serves (openapi-core),
and that checker on its own.

A response whose status the document does not list for its operation, or whose body is not
the shape it states, fails the test at once; a request the API accepted (2xx) must be one
the document accepts too.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse

from extauthz.dev.ports import free_port, port_open
from tests.support.procs import REPO, stop, wait_for

Operation = tuple[str, str]  # (method, path template), as the document names it


class Conformance:
    """Checks request/response pairs against an OpenAPI document, and notes which
    (operation, status) pairs were seen."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.openapi = _openapi(json.dumps(document, sort_keys=True))
        self.seen: set[tuple[str, str, int]] = set()

    @property
    def documented(self) -> set[tuple[str, str, int]]:
        """Every (method, path template, status) the document lists."""
        return {
            (method.upper(), path, int(status))
            for path, operations in self.document["paths"].items()
            for method, operation in operations.items()
            for status in operation["responses"]
        }

    def operation(self, method: str, path: str) -> Operation:
        """The documented operation a request is for; AssertionError when there is none."""
        for template, operations in self.document["paths"].items():
            if method.lower() in operations and _matches(template, path):
                return method.upper(), template
        raise AssertionError(f"{method} {path}: not an operation of the document")

    def check(
        self,
        method: str,
        target: str,
        request_headers: dict[str, str],
        request_body: bytes | None,
        status: int,
        response_headers: dict[str, str],
        response_body: bytes,
    ) -> None:
        """Fail unless the document lists `status` for this operation and the body is its
        shape; for a 2xx, unless the document also accepts the request."""
        url = urllib.parse.urlsplit(target)
        method, template = self.operation(method, url.path)
        query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        request = MockRequest(
            "http://127.0.0.1",
            method,
            url.path,
            args=query,
            headers=request_headers,
            data=request_body,
            content_type=request_headers.get("content-type", "application/json"),
        )
        response = MockResponse(
            response_body,
            status,
            headers=response_headers,
            content_type=response_headers.get("content-type", ""),
        )
        where = f"{method} {target} -> {status} {response_body[:300]!r}"
        try:
            self.openapi.validate_response(request, response)
        except Exception as e:
            raise AssertionError(f"{where}: not as the document says: {_reason(e)}") from e
        if 200 <= status < 300:
            try:
                self.openapi.validate_request(request)
            except Exception as e:
                raise AssertionError(
                    f"{where}: the document refuses the request: {_reason(e)}"
                ) from e
        self.seen.add((method, template, status))


@cache
def _openapi(document: str) -> OpenAPI:
    return OpenAPI.from_dict(json.loads(document))


def _matches(template: str, path: str) -> bool:
    want, got = template.split("/"), path.split("/")
    return len(want) == len(got) and all(
        w == g or (w.startswith("{") and bool(g)) for w, g in zip(want, got, strict=True)
    )


def _reason(error: BaseException) -> str:
    causes = [str(error)]
    while error.__cause__ is not None:
        error = error.__cause__
        causes.append(str(error))
    return " <- ".join(causes)


class Api:
    """A client of one `extauthz admin`: every exchange is checked against the document it
    serves at /openapi.json."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self._conformance: Conformance | None = None

    @property
    def conformance(self) -> Conformance:
        if self._conformance is None:
            status, _, body = self._exchange("GET", "/openapi.json", {}, None, chunked=False)
            assert status == 200, body
            self._conformance = Conformance(json.loads(body))
        return self._conformance

    def call(
        self,
        method: str,
        path: str,
        token: str | None = None,
        body: Any = None,
        raw: bytes | None = None,
    ) -> tuple[int, Any]:
        """(status, JSON body or None), checked against the document."""
        status, text = self.send(method, path, token, body, raw)
        return status, json.loads(text) if text else None

    def send(
        self,
        method: str,
        path: str,
        token: str | None = None,
        body: Any = None,
        raw: bytes | None = None,
        chunked: bool = False,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """(status, body bytes), checked against the document. `chunked`: the body (or an
        empty one) is sent with Transfer-Encoding: chunked."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        sent = {"content-type": "application/json", **(headers or {})}
        if token is not None:
            sent["authorization"] = f"Bearer {token}"
        status, answered, text = self._exchange(method, path, sent, data, chunked)
        self.conformance.check(method, path, sent, data, status, answered, text)
        return status, text

    def _exchange(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes | None,
        chunked: bool,
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            if chunked:
                conn.request(method, path, iter([body or b"{}"]), headers, encode_chunked=True)
            else:
                conn.request(method, path, body, headers)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()


@contextmanager
def admin_server(redis_url: str, log: Path, *extra: str) -> Iterator[Api]:
    """`extauthz admin` on a free loopback port (failed-authentication limit off unless
    `extra` sets it); yields its client."""
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "extauthz", "admin", "--redis-url", redis_url,
             "--admin-listen", f"127.0.0.1:{port}", "--auth-failure-burst", "0", *extra],
            stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
        )  # fmt: skip
    try:
        wait_for(lambda: port_open(port) or proc.poll() is not None, 20, "extauthz admin")
        assert proc.poll() is None, log.read_text()
        yield Api(port)
    finally:
        stop(proc)
