"""`extauthz admin`: the management API, JSON under `/v1/`, OpenAPI at `/openapi.json`
(contract: design.md §12). A thin HTTP shell over admin/tokens.py, admin/audit.py and the
store; it runs as its own process (uvicorn), never inside the gRPC workers.

Who may do what: a Bearer token with scope `admin` manages everything; one with scope
`tokens:manage` manages only tokens whose routes are all among its own routes (never `*`
unless it has `*`) and cannot grant `admin` or `tokens:manage`. No or a bad token: 401;
valid but not allowed: 403. Errors are `{"error": ..., "message": ...}`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from extauthz import __version__
from extauthz.admin import audit, tokens
from extauthz.core.credentials import BearerCredential, parse_authorization, token_hash
from extauthz.core.token_record import TokenRecord
from extauthz.errors import (
    InvalidValue,
    MalformedRecord,
    StoreUnavailable,
    TokenExists,
    UnknownToken,
    UsageError,
)
from extauthz.runtime.auth_failures import FailureLimiter
from extauthz.storage.store import Store
from extauthz.storage.token_index import TokenIndex

ADMIN = "admin"
MANAGER = "tokens:manage"
MAX_BODY_BYTES = 64 << 10

# The console is three files served from this package; the page may load only those, talk
# only to this origin, and be framed by nobody.
CONSOLE_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/console.js": ("console.js", "text/javascript; charset=utf-8"),
    "/console.css": ("console.css", "text/css; charset=utf-8"),
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class ApiError(Exception):
    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error, self.message = status, error, message


@dataclass(frozen=True)
class Caller:
    """Who called: the token's id, and what it may manage."""

    id: str
    admin: bool
    routes: frozenset[str]

    def may_manage(self, routes: frozenset[str]) -> bool:
        if self.admin or "*" in self.routes:
            return True
        return "*" not in routes and routes <= self.routes

    def may_grant(self, scopes: frozenset[str]) -> bool:
        return self.admin or not scopes & {ADMIN, MANAGER}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NewToken(_Strict):
    routes: list[str] = Field(min_length=1, max_length=256)
    scopes: list[str] = Field(default_factory=list, max_length=256)
    name: str = Field(default="", max_length=256)
    ttl: str | None = Field(default=None, max_length=16, description="30s, 15m, 1h, 7d")
    rate_limit: str | None = Field(default=None, max_length=32, description="600/m")


class TokenChange(_Strict):
    routes: list[str] | None = Field(default=None, min_length=1, max_length=256)
    scopes: list[str] | None = Field(default=None, max_length=256)
    name: str | None = Field(default=None, max_length=256)
    ttl: str | None = Field(default=None, max_length=16)
    no_expiry: bool = False
    rate_limit: str | None = Field(default=None, max_length=32, description="600/m or none")


class Rotation(_Strict):
    grace: str | None = Field(default=None, max_length=16, description="e.g. 10m")


def create_app(store: Store, failures: FailureLimiter | None = None) -> FastAPI:
    """The API on `store`; `failures` limits failed authentications per client address."""
    app = FastAPI(
        title="extauthz management API",
        version=__version__,
        docs_url=None,
        redoc_url=None,
    )
    _errors(app)

    def caller(request: Request) -> Caller:
        address = request.client.host if request.client else ""
        if failures is not None and failures.retry_after(address) is not None:
            raise ApiError(429, "rate_limited", "too many failed authentications; retry later")
        credential = parse_authorization(request.headers.get("authorization"))
        record = None
        if isinstance(credential, BearerCredential):
            try:
                record = store.token_record(token_hash(credential.token))
            except MalformedRecord:
                record = None
        if record is None or record.expired(time.time()):
            if failures is not None:
                failures.failed(address)
            raise ApiError(401, "unauthorized", "a valid admin or tokens:manage token is required")
        if ADMIN not in record.scopes and MANAGER not in record.scopes:
            raise ApiError(403, "forbidden", "this token may not manage tokens")
        return Caller(record.id, ADMIN in record.scopes, record.routes)

    app.state.authenticate = caller
    _routes(app, store)
    _console(app)
    return app


def _console(app: FastAPI) -> None:
    """The web console at `/`: static files, no build step, nothing from other hosts."""
    folder = resources.files("extauthz.admin") / "console"
    for path, (name, media_type) in CONSOLE_FILES.items():
        body = (folder / name).read_bytes()

        def serve(body: bytes = body, media_type: str = media_type) -> Response:
            return Response(body, media_type=media_type)

        app.add_api_route(path, serve, methods=["GET"], include_in_schema=False)


def _authenticated(request: Request) -> Caller:
    """The dependency every /v1/ endpoint takes: the app's authentication (create_app)."""
    authenticate: Callable[[Request], Caller] = request.app.state.authenticate
    return authenticate(request)


Who = Annotated[Caller, Depends(_authenticated)]


def _routes(app: FastAPI, store: Store) -> None:
    """The /v1/ endpoints."""

    def owned(who: Caller, token_id: str) -> TokenRecord:
        record = tokens.show(store, token_id)
        if not who.may_manage(record.routes):
            raise ApiError(404, "not_found", f"no token with id {token_id!r}")
        return record

    @app.get("/v1/tokens")
    def list_tokens(
        who: Who,
        route: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        cursor: Annotated[float | None, Query(description="next_cursor of the page before")] = None,
    ) -> dict[str, Any]:
        records, next_cursor = TokenIndex(store).page(cursor, limit, route)
        shown = [
            r.to_json() for r in records if isinstance(r, TokenRecord) and who.may_manage(r.routes)
        ]
        return {"tokens": shown, "next_cursor": next_cursor}

    @app.post("/v1/tokens", status_code=201)
    def create_token(who: Who, body: NewToken) -> dict[str, Any]:
        routes, scopes = frozenset(body.routes), frozenset(body.scopes)
        _allowed(who, routes, scopes)
        issued = tokens.create(
            store,
            routes,
            scopes,
            ttl_seconds=tokens.parse_ttl(body.ttl) if body.ttl else None,
            name=body.name,
            now=time.time(),
            rate_limit=tokens.parse_rate_limit(body.rate_limit) if body.rate_limit else None,
            actor=who.id,
        )
        return {**issued.record.to_json(), "token": issued.token, "warnings": issued.warnings}

    @app.get("/v1/tokens/{token_id}")
    def get_token(who: Who, token_id: str) -> dict[str, Any]:
        return owned(who, token_id).to_json()

    @app.patch("/v1/tokens/{token_id}")
    def update_token(who: Who, token_id: str, body: TokenChange) -> dict[str, Any]:
        current = owned(who, token_id)
        routes = frozenset(body.routes) if body.routes is not None else current.routes
        scopes = frozenset(body.scopes) if body.scopes is not None else current.scopes
        _allowed(who, routes, scopes)
        updated = tokens.update(
            store,
            token_id,
            routes=body.routes,
            scopes=body.scopes,
            name=body.name,
            ttl_seconds=tokens.parse_ttl(body.ttl) if body.ttl else None,
            no_expiry=body.no_expiry,
            rate_limit=tokens.parse_rate_limit(body.rate_limit) if body.rate_limit else "keep",
            now=time.time(),
            confirm=2.0,
            actor=who.id,
        )
        return updated.record.to_json()

    @app.delete("/v1/tokens/{token_id}", status_code=204)
    def revoke_token(who: Who, token_id: str) -> Response:
        owned(who, token_id)
        tokens.revoke(store, token_id, confirm=2.0, actor=who.id)
        return Response(status_code=204)

    @app.post("/v1/tokens/{token_id}/rotate")
    def rotate_token(who: Who, token_id: str, body: Rotation | None = None) -> dict[str, Any]:
        owned(who, token_id)
        grace = tokens.parse_ttl(body.grace, "grace") if body and body.grace else None
        issued = tokens.rotate(store, token_id, 2.0, grace, time.time(), actor=who.id)
        return {**issued.record.to_json(), "token": issued.token}

    @app.get("/v1/tokens/{token_id}/usage")
    def token_usage(
        who: Who, token_id: str, days: Annotated[int, Query(ge=1, le=366)] = 7
    ) -> dict[str, Any]:
        owned(who, token_id)
        return tokens.usage(store, token_id, days, time.time())

    @app.get("/v1/policy")
    def policy(who: Who) -> dict[str, Any]:
        snapshot = store.load_policy()
        if snapshot is None:
            return {"version": 0, "routes": {}}
        return {
            "version": snapshot.version,
            "routes": {name: r.to_json() for name, r in sorted(snapshot.routes.items())},
        }

    @app.get("/v1/audit")
    def audit_tail(who: Who, limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> dict[str, Any]:
        if not who.admin:
            raise ApiError(403, "forbidden", "the audit log is for admin tokens")
        return {"events": audit.tail(store, limit)}


def _allowed(who: Caller, routes: frozenset[str], scopes: frozenset[str]) -> None:
    if not who.may_manage(routes):
        raise ApiError(403, "forbidden", "a token for routes outside yours")
    if not who.may_grant(scopes):
        raise ApiError(403, "forbidden", "only an admin token may grant admin or tokens:manage")


def _errors(app: FastAPI) -> None:
    """Every error in one JSON shape; domain errors by meaning."""

    def reply(status: int, error: str, message: str) -> JSONResponse:
        return JSONResponse({"error": error, "message": message}, status_code=status)

    @app.middleware("http")
    async def limit_body_and_add_security_headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        length = request.headers.get("content-length", "0")
        if "transfer-encoding" in request.headers:  # a body of unknown size: refused unread
            response: Response = reply(
                400, "invalid_request", "send the body with a Content-Length, not chunked"
            )
        elif not length.isdigit() or int(length) > MAX_BODY_BYTES:
            response = reply(400, "invalid_request", f"body larger than {MAX_BODY_BYTES} bytes")
        else:
            response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        kinds = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed"}
        return reply(e.status_code, kinds.get(e.status_code, "error"), str(e.detail))

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return reply(e.status, e.error, e.message)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return reply(400, "invalid_request", f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(InvalidValue)
    async def invalid_value(request: Request, e: InvalidValue) -> JSONResponse:
        return reply(400, "invalid_request", f"{e.field.replace('-', '_')}: {e.rule}")

    @app.exception_handler(UnknownToken)
    async def unknown(request: Request, e: UnknownToken) -> JSONResponse:
        return reply(404, "not_found", str(e))

    @app.exception_handler(TokenExists)
    async def exists(request: Request, e: TokenExists) -> JSONResponse:
        return reply(409, "conflict", str(e))

    @app.exception_handler(UsageError)
    async def usage(request: Request, e: UsageError) -> JSONResponse:
        return reply(400, "invalid_request", str(e))

    @app.exception_handler(StoreUnavailable)
    async def unavailable(request: Request, e: StoreUnavailable) -> JSONResponse:
        return reply(503, "unavailable", "Redis cannot be reached; retry later")
