"""`extauthz admin`: the management API, JSON under `/v1/`, OpenAPI at `/openapi.json`
(docs/tokens.md#management-api, docs/design.md#management-plane-authorization). A thin HTTP
shell over admin/tokens.py, admin/audit.py and the store; it runs as its own process (uvicorn),
never inside the gRPC workers.

The OpenAPI document is the API (published as docs/openapi.json): every answer goes through
its model (admin/schema.py), every operation lists the statuses it really answers, with the
one error shape, and the bearer scheme it really reads; FastAPI's 422 is not among them
(a request that fails validation is a 400 here).

Who may do what is asked of one function, admin/access.py `decide`, by every endpoint: only
management tokens call this API; `admin` manages everything, a `tokens:manage` manager only
the tokens it could have created (others are 404 to it). No or a bad token: 401; valid but
not allowed: 403. Errors are `{"error": ..., "message": ...}`, always JSON.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from extauthz import __version__
from extauthz.admin import audit, leaks, teams, tokens
from extauthz.admin.access import Action, Manager, Target, Verdict, decide
from extauthz.admin.schema import (
    COMMON_ERRORS,
    NOT_FOUND,
    NOT_FOUND_TEAM,
    SCANNING_ERRORS,
    TEAM_CONFLICT,
    AuditTail,
    ChangedTeam,
    ChangedToken,
    IssuedToken,
    LeakFeedback,
    Policy,
    Revocation,
    RotatedToken,
    Team,
    TeamDeleted,
    TeamList,
    TeamUsage,
    Token,
    TokenPage,
    Usage,
    leak_report_schema,
)
from extauthz.core import secret_scanning
from extauthz.core.credentials import (
    BearerCredential,
    checksum_fails,
    parse_authorization,
    token_hash,
)
from extauthz.core.team_record import TeamRecord
from extauthz.core.token_record import MANAGEMENT_SCOPES, TokenRecord
from extauthz.errors import (
    BadSignature,
    InvalidValue,
    MalformedRecord,
    StoreError,
    StoreUnavailable,
    TeamExists,
    TeamHasTokens,
    TokenExists,
    UnknownTeam,
    UnknownToken,
    UsageError,
)
from extauthz.runtime.auth_failures import FailureLimiter
from extauthz.storage.store import Store
from extauthz.storage.team_index import TeamIndex
from extauthz.storage.token_index import TokenIndex

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


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NewToken(_Strict):
    routes: list[str] = Field(min_length=1, max_length=256)
    scopes: list[str] = Field(default_factory=list, max_length=256)
    name: str = Field(default="", max_length=256)
    ttl: str | None = Field(default=None, max_length=16, description="30s, 15m, 1h, 7d")
    rate_limit: str | None = Field(default=None, max_length=32, description="600/m")
    models: list[str] | None = Field(
        default=None, max_length=256, description="LLM models (names, prefix*); null: any"
    )
    token_limit: str | None = Field(default=None, max_length=32, description="100000/d")
    budget: str | None = Field(default=None, max_length=32, description="USD: 50/mo, 0.25/h")
    team: str | None = Field(
        default=None, max_length=63, description="its team (a team manager's: its own)"
    )
    allowed_cidrs: list[str] | None = Field(
        default=None, max_length=32, description="client networks it may be used from; null: any"
    )
    allow_unknown_route: bool = Field(
        default=False, description="accept routes the synced policy does not have (yet)"
    )


class TokenChange(_Strict):
    routes: list[str] | None = Field(default=None, min_length=1, max_length=256)
    scopes: list[str] | None = Field(default=None, max_length=256)
    name: str | None = Field(default=None, max_length=256)
    ttl: str | None = Field(default=None, max_length=16)
    no_expiry: bool = False
    rate_limit: str | None = Field(default=None, max_length=32, description="600/m or none")
    models: list[str] | None = Field(default=None, max_length=256, description="new models")
    all_models: bool = False
    token_limit: str | None = Field(default=None, max_length=32, description="100000/d or none")
    budget: str | None = Field(default=None, max_length=32, description="50/mo or none")
    team: str | None = Field(default=None, max_length=63, description="move it into this team")
    no_team: bool = Field(default=False, description="take it out of its team")
    allowed_cidrs: list[str] | None = Field(
        default=None, max_length=32, description="new client networks (replace the old)"
    )
    any_address: bool = Field(default=False, description="remove allowed_cidrs")
    allow_unknown_route: bool = Field(
        default=False, description="accept new routes the synced policy does not have (yet)"
    )


class NewTeam(_Strict):
    id: str = Field(max_length=63, description="a-z, 0-9 and '-', not starting with '-'")
    name: str = Field(default="", max_length=256)
    models: list[str] | None = Field(default=None, max_length=256, description="null: any")
    rate_limit: str | None = Field(default=None, max_length=32, description="600/m")
    token_limit: str | None = Field(default=None, max_length=32, description="100000/d")
    budget: str | None = Field(default=None, max_length=32, description="USD: 50/mo, 0.25/h")
    allowed_cidrs: list[str] | None = Field(
        default=None, max_length=32, description="client networks its tokens may use; null: any"
    )


class TeamChange(_Strict):
    name: str | None = Field(default=None, max_length=256)
    models: list[str] | None = Field(default=None, max_length=256, description="new models")
    all_models: bool = False
    rate_limit: str | None = Field(default=None, max_length=32, description="600/m or none")
    token_limit: str | None = Field(default=None, max_length=32, description="100000/d or none")
    budget: str | None = Field(default=None, max_length=32, description="50/mo or none")
    allowed_cidrs: list[str] | None = Field(
        default=None, max_length=32, description="new client networks (replace the old)"
    )
    any_address: bool = Field(default=False, description="remove allowed_cidrs")


class Rotation(_Strict):
    grace: str | None = Field(default=None, max_length=16, description="e.g. 10m")


class AdminApp(FastAPI):
    """FastAPI, with a document that lists no 422: FastAPI adds one to every operation that
    takes parameters or a body, but this API answers a failed validation with its 400
    (`_errors`), which every operation lists."""

    def openapi(self) -> dict[str, Any]:
        document = super().openapi()
        for operations in document.get("paths", {}).values():
            for operation in operations.values():
                responses = operation.get("responses", {})
                responses.pop("422", None)
                operation["responses"] = dict(sorted(responses.items()))  # (by status)
        schemas = document.get("components", {}).get("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        return document


def _app() -> AdminApp:
    """The API's routes and error handling, not yet bound to a store."""
    app = AdminApp(
        title="extauthz management API",
        version=__version__,
        description=DESCRIPTION,
        docs_url=None,
        redoc_url=None,
        generate_unique_id_function=_operation_id,
    )
    _errors(app)
    for router in (tokens_api, teams_api, policy_api, audit_api, scanning_api):
        app.include_router(router)
    return app


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document the API serves at /openapi.json (scripts/openapi.py writes it
    to docs/openapi.json)."""
    return _app().openapi()


def _operation_id(route: APIRoute) -> str:
    return route.name


DESCRIPTION = """\
The management API of extauthz (docs/tokens.md, "Management API"). Only management tokens
call it, as `Authorization: Bearer eat_...`: a token with scope `admin` manages everything,
one with `tokens:manage` exactly the model tokens it could have created.

Every error is JSON, `{"error": CODE, "message": TEXT}`, with the codes listed for each
status. A failure of the server itself is 500 `internal_error` in the same shape.
"""


def create_app(
    store: Store,
    failures: FailureLimiter | None = None,
    scanning_keys: leaks.KeysFile | None = None,
) -> FastAPI:
    """The API on `store`; `failures` limits failed authentications per client address;
    `scanning_keys`: GitHub's keys, for secret scanning reports (None: they are all 401)."""
    app = _app()
    app.state.failures = failures
    app.state.scanning_keys = scanning_keys

    def caller(request: Request) -> Manager:
        # A valid credential is never refused by the failed-authentication limit (a flood
        # of bad tokens from a shared address must not lock the admin out): the limit only
        # turns a failure into 429 instead of 401.
        address = request.client.host if request.client else ""
        credential = parse_authorization(request.headers.get("authorization"))
        record = None
        if isinstance(credential, BearerCredential) and not checksum_fails(credential.token):
            try:
                record = store.token_record(token_hash(credential.token))
            except MalformedRecord:
                record = None
        if record is None or record.expired(time.time()):
            if failures is not None:
                if failures.retry_after(address) is not None:
                    raise ApiError(
                        429, "rate_limited", "too many failed authentications; retry later"
                    )
                failures.failed(address)
            raise ApiError(401, "unauthorized", "a valid admin or tokens:manage token is required")
        if record.allowed_cidrs is not None and not record.allowed_cidrs.allows(address):
            raise ApiError(403, "address_not_allowed", "this token may not be used from here")
        who = Manager.of(record)
        if who is None:
            hint = (
                " (made before token kinds: run `extauthz token reindex` to mark it)"
                if not record.management and record.scopes & MANAGEMENT_SCOPES
                else ""
            )
            raise ApiError(403, "forbidden", f"a model token cannot manage tokens{hint}")
        return who

    app.state.authenticate = caller
    app.state.store = store
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


# The scheme the document names; it refuses nothing itself: the app's authentication reads
# the header (parse_authorization, as the gRPC server does) and answers 401, 403 or 429.
bearer = HTTPBearer(
    scheme_name="bearer",
    bearerFormat="eat_...",
    description="A management token (scope admin or tokens:manage).",
    auto_error=False,
)


def _authenticated(
    request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]
) -> Manager:
    """The dependency every /v1/ endpoint takes: the app's authentication (create_app)."""
    authenticate: Callable[[Request], Manager] = request.app.state.authenticate
    return authenticate(request)


Who = Annotated[Manager, Depends(_authenticated)]


def _require(who: Manager, action: Action, target: TokenRecord | None = None) -> None:
    """Ask `access.decide`; raise the API's answer when it is not an allow."""
    verdict = decide(who, action, Target.of(target) if target is not None else None)
    if verdict is Verdict.NOT_FOUND:
        token_id = target.id if target is not None else ""
        raise ApiError(404, "not_found", f"no token with id {token_id!r}")
    if verdict is Verdict.FORBIDDEN:
        raise ApiError(403, "forbidden", _FORBIDDEN[action])


def _require_team(who: Manager, action: Action, team_id: str | None) -> None:
    """Ask `access.decide` about a team: 404 for one the caller may not see."""
    verdict = decide(who, action, team=team_id)
    if verdict is Verdict.NOT_FOUND:
        raise ApiError(404, "not_found", f"no team with id {team_id!r}")
    if verdict is Verdict.FORBIDDEN:
        raise ApiError(403, "forbidden", _FORBIDDEN[action])


_FORBIDDEN = {
    Action.CREATE: "a manager may give only model tokens for its own routes (and team), "
    "expiring no later than itself",
    Action.AUDIT: "the audit log is for admin tokens",
    Action.TEAM_WRITE: "teams are created, changed and deleted by admin tokens",
}


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


Db = Annotated[Store, Depends(_store)]

# One router per resource; every endpoint asks `_require` (access.decide) before it acts.
# Each answer goes through its model (response_model; exclude_unset: a key the code leaves
# out stays out); the errors every operation may answer are the routers'.
tokens_api = APIRouter(prefix="/v1/tokens", tags=["tokens"], responses=COMMON_ERRORS)
teams_api = APIRouter(prefix="/v1/teams", tags=["teams"], responses=COMMON_ERRORS)
policy_api = APIRouter(prefix="/v1/policy", tags=["policy"], responses=COMMON_ERRORS)
audit_api = APIRouter(prefix="/v1/audit", tags=["audit"], responses=COMMON_ERRORS)


def _still(who: Manager, token_id: str, action: Action) -> Callable[[TokenRecord | None], None]:
    """The check a change runs inside its transaction: the token as it is then must still
    be the caller's to act on (a record that cannot be read: an admin's only)."""

    def check(record: TokenRecord | None) -> None:
        if record is None:
            if not who.admin:
                raise ApiError(404, "not_found", f"no token with id {token_id!r}")
            return
        _require(who, action, record)

    return check


def _owned(store: Store, who: Manager, token_id: str, action: Action) -> TokenRecord | None:
    """The token, if `who` may do `action` to it; None for a record that cannot be read
    (edited by hand) when an admin revokes it: revoke removes what it can name."""
    try:
        record = tokens.show(store, token_id)
    except UnknownToken:
        raise ApiError(404, "not_found", f"no token with id {token_id!r}") from None
    except MalformedRecord as e:
        if not who.admin:  # nothing to judge it by: not the manager's to know about
            raise ApiError(404, "not_found", f"no token with id {token_id!r}") from None
        if action is Action.REVOKE:
            return None
        raise ApiError(409, "malformed_record", f"{e}; fix it by hand, or revoke it") from e
    _require(who, action, record)
    return record


@tokens_api.get(
    "",
    response_model=TokenPage,
    responses=NOT_FOUND_TEAM,
    response_description="A page of tokens.",
)
def list_tokens(
    who: Who,
    store: Db,
    route: Annotated[str | None, Query(description="only tokens that grant this route")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(description="next_cursor of the page before")] = None,
    team: Annotated[
        str | None, Query(max_length=63, description="only the tokens of this team")
    ] = None,
) -> dict[str, Any]:
    """The tokens the caller may see, in creation order, a page at a time (a page may hold
    fewer than `limit`: those it may not see are left out). With `team`: that team's (404
    for a team the caller may not see, or none has)."""
    among = None
    if team is not None:
        _require_team(who, Action.TEAM_READ, _team_id(team))
        _known_team(store, team)
        among = TeamIndex(store).member_ids(team)
    records, next_cursor = TokenIndex(store).page(_cursor(cursor), limit, route, among)
    shown = [
        r.to_json()
        for r in records
        if isinstance(r, TokenRecord)
        and (team is None or r.team == team)  # (an id left in the team's set: moved since)
        and decide(who, Action.READ, Target.of(r)) == "allow"
    ]
    return {"tokens": shown, "next_cursor": _cursor_text(next_cursor)}


@tokens_api.post(
    "", status_code=201, response_model=IssuedToken, response_description="The new token."
)
def create_token(who: Who, store: Db, body: NewToken) -> dict[str, Any]:
    """Make a token; its secret is in this answer only. A manager makes model tokens for its
    own routes, expiring no later than itself (else 403)."""
    issued = tokens.create(
        store,
        body.routes,
        body.scopes,
        ttl_seconds=tokens.parse_ttl(body.ttl) if body.ttl is not None else None,
        name=body.name,
        now=time.time(),
        rate_limit=tokens.parse_rate_limit(body.rate_limit)
        if body.rate_limit is not None
        else None,
        actor=who.id,
        not_after=None if who.admin else who.expires_at,
        check=lambda record: _require(who, Action.CREATE, record),
        models=body.models,
        token_limit=tokens.parse_token_limit(body.token_limit)
        if body.token_limit is not None
        else None,
        allow_unknown_route=body.allow_unknown_route,
        team=body.team if body.team is not None else who.team,
        budget=tokens.parse_budget(body.budget) if body.budget is not None else None,
        allowed_cidrs=body.allowed_cidrs,
    )
    return {**issued.record.to_json(), "token": issued.token, "warnings": issued.warnings}


@tokens_api.get(
    "/{token_id}", response_model=Token, responses=NOT_FOUND, response_description="The token."
)
def get_token(who: Who, store: Db, token_id: str) -> dict[str, Any]:
    """One token's record."""
    record = _owned(store, who, token_id, Action.READ)
    if record is None:  # pragma: no cover (None only for REVOKE)
        raise ApiError(404, "not_found", f"no token with id {token_id!r}")
    return record.to_json()


@tokens_api.patch(
    "/{token_id}",
    response_model=ChangedToken,
    responses=NOT_FOUND,
    response_description="Changed, live on every server that confirmed it.",
)
def update_token(who: Who, store: Db, token_id: str, body: TokenChange) -> dict[str, Any]:
    """Change a token's record (not its secret); fields left out are kept."""
    _owned(store, who, token_id, Action.UPDATE)

    def check(current: TokenRecord, new: TokenRecord) -> None:
        _require(who, Action.UPDATE, current)  # (as it is inside the transaction)
        _require(who, Action.CREATE, new)

    updated = tokens.update(
        store,
        token_id,
        routes=body.routes,
        scopes=body.scopes,
        name=body.name,
        ttl_seconds=tokens.parse_ttl(body.ttl) if body.ttl is not None else None,
        no_expiry=body.no_expiry,
        rate_limit=tokens.parse_rate_limit(body.rate_limit)
        if body.rate_limit is not None
        else "keep",
        now=time.time(),
        confirm=2.0,
        actor=who.id,
        check=check,
        models=None if body.all_models else body.models if body.models is not None else "keep",
        token_limit=tokens.parse_token_limit(body.token_limit)
        if body.token_limit is not None
        else "keep",
        allow_unknown_route=body.allow_unknown_route,
        team=None if body.no_team else body.team if body.team is not None else "keep",
        budget=tokens.parse_budget(body.budget) if body.budget is not None else "keep",
        allowed_cidrs=None if body.any_address else body.allowed_cidrs or "keep",
    )
    return {**updated.record.to_json(), **_reported(updated.unconfirmed, updated.warnings)}


@tokens_api.delete(
    "/{token_id}",
    status_code=204,
    response_model=None,
    responses={
        204: {"description": "Revoked, confirmed by every live server and by a replica."},
        200: {
            "model": Revocation,
            "description": "Revoked, with something the caller must know: servers that did "
            "not confirm in time, or warnings (no replica confirmed it; no audit event).",
        },
        **NOT_FOUND,
    },
)
def revoke_token(who: Who, store: Db, token_id: str) -> Response:
    """Revoke a token (and a secret of it still in rotation grace)."""
    _owned(store, who, token_id, Action.REVOKE)
    check = _still(who, token_id, Action.REVOKE)
    revoked = tokens.revoke(store, token_id, confirm=2.0, actor=who.id, check=check)
    if not revoked.unconfirmed and not revoked.warnings:
        return Response(status_code=204)
    # done, with something the caller must know: which servers may still accept it
    reported = _reported(revoked.unconfirmed, revoked.warnings)
    return JSONResponse({"id": token_id, "revoked": revoked.count, **reported})


@tokens_api.post(
    "/{token_id}/rotate",
    response_model=RotatedToken,
    responses=NOT_FOUND,
    response_description="The new secret.",
)
def rotate_token(
    who: Who, store: Db, token_id: str, body: Rotation | None = None
) -> dict[str, Any]:
    """A new secret for the same token; the old one stops at once, or after `grace`."""
    _owned(store, who, token_id, Action.ROTATE)
    grace = tokens.parse_ttl(body.grace, "grace") if body and body.grace else None
    check = _still(who, token_id, Action.ROTATE)
    issued = tokens.rotate(store, token_id, 2.0, grace, time.time(), actor=who.id, check=check)
    reported = _reported(issued.unconfirmed, issued.warnings)
    return {**issued.record.to_json(), "token": issued.token, **reported}


@tokens_api.get(
    "/{token_id}/usage",
    response_model=Usage,
    response_model_exclude_unset=True,
    responses=NOT_FOUND,
    response_description="Requests per UTC day.",
)
def token_usage(
    who: Who, store: Db, token_id: str, days: Annotated[int, Query(ge=1, le=366)] = 7
) -> dict[str, Any]:
    """A token's allowed and rate-limited requests for the last `days` UTC days, and its
    LLM use per model (for an admin, a revoked token's while its counts are kept, as
    `token usage` shows it; a manager cannot tell a revoked token was its own)."""
    try:
        _owned(store, who, token_id, Action.USAGE)
    except ApiError as e:
        if not (who.admin and e.status == 404):
            raise
    return tokens.usage(store, token_id, days, time.time())


# --- teams --------------------------------------------------------------------------------


def _team_id(team_id: str) -> str:
    """A path's team id; 404 for one no team could have (nothing looked up)."""
    try:
        return teams.check_team_id(team_id)
    except InvalidValue:
        raise ApiError(404, "not_found", f"no team with id {team_id!r}") from None


def _known_team(store: Store, team_id: str) -> Any:
    try:
        return teams.show(store, team_id)
    except UnknownTeam:
        raise ApiError(404, "not_found", f"no team with id {team_id!r}") from None


@teams_api.get("", response_model=TeamList, response_description="The teams it may see.")
def list_teams(who: Who, store: Db) -> dict[str, Any]:
    """The teams the caller may see, in creation order (a team manager: its own)."""
    shown = [
        t.to_json()
        for t in teams.listing(store)
        if isinstance(t, TeamRecord) and decide(who, Action.TEAM_READ, team=t.id) == "allow"
    ]
    return {"teams": shown}


@teams_api.post(
    "",
    status_code=201,
    response_model=ChangedTeam,
    responses=TEAM_CONFLICT,
    response_description="The new team.",
)
def create_team(who: Who, store: Db, body: NewTeam) -> dict[str, Any]:
    """Make a team (admin tokens only)."""
    _require_team(who, Action.TEAM_WRITE, None)
    made = teams.create(
        store,
        body.id,
        body.name,
        body.models,
        tokens.parse_rate_limit(body.rate_limit) if body.rate_limit is not None else None,
        tokens.parse_token_limit(body.token_limit) if body.token_limit is not None else None,
        time.time(),
        who.id,
        tokens.parse_budget(body.budget) if body.budget is not None else None,
        allowed_cidrs=body.allowed_cidrs,
    )
    return {**made.record.to_json(), "warnings": list(made.warnings)}


@teams_api.get(
    "/{team_id}",
    response_model=Team,
    responses=NOT_FOUND_TEAM,
    response_description="The team, and how many tokens it has.",
)
def get_team(who: Who, store: Db, team_id: str) -> dict[str, Any]:
    """One team (admins; its own team managers)."""
    _require_team(who, Action.TEAM_READ, _team_id(team_id))
    record = _known_team(store, team_id)
    return {**record.to_json(), "tokens": len(teams.members(store, team_id))}


@teams_api.patch(
    "/{team_id}",
    response_model=ChangedTeam,
    responses=NOT_FOUND_TEAM,
    response_description="Changed: every server applies it within a second.",
)
def update_team(who: Who, store: Db, team_id: str, body: TeamChange) -> dict[str, Any]:
    """Change a team (admin tokens only); fields left out are kept."""
    _require_team(who, Action.TEAM_WRITE, _team_id(team_id))
    _known_team(store, team_id)

    try:
        changed = teams.update(
            store,
            team_id,
            name=teams.UNCHANGED if body.name is None else body.name,
            models=None if body.all_models else teams.UNCHANGED if body.models is None
            else body.models,
            rate_limit=teams.limit_change(body.rate_limit, tokens.parse_rate_limit),
            token_limit=teams.limit_change(body.token_limit, tokens.parse_token_limit),
            budget=teams.limit_change(body.budget, tokens.parse_budget),
            now=time.time(),
            actor=who.id,
            allowed_cidrs=None if body.any_address else teams.UNCHANGED
            if body.allowed_cidrs is None else body.allowed_cidrs,
        )  # fmt: skip
    except UnknownTeam:  # (deleted meanwhile)
        raise ApiError(404, "not_found", f"no team with id {team_id!r}") from None
    return {**changed.record.to_json(), "warnings": list(changed.warnings)}


@teams_api.delete(
    "/{team_id}",
    response_model=TeamDeleted,
    responses={**NOT_FOUND_TEAM, **TEAM_CONFLICT},
    response_description="Deleted (with its tokens, when `revoke_tokens`).",
)
def delete_team(
    who: Who,
    store: Db,
    team_id: str,
    revoke_tokens: Annotated[bool, Query(description="revoke its tokens first")] = False,
) -> dict[str, Any]:
    """Delete a team (admin tokens only): refused (409) while it has tokens, unless
    `revoke_tokens`."""
    _require_team(who, Action.TEAM_WRITE, _team_id(team_id))
    try:  # (teams.delete reads the team first: unknown → 404, edited by hand → 409)
        deleted = teams.delete(store, team_id, revoke_tokens, time.time(), who.id)
    except UnknownTeam:
        raise ApiError(404, "not_found", f"no team with id {team_id!r}") from None
    return {"id": team_id, "deleted": True, "warnings": list(deleted.warnings)}


@teams_api.get(
    "/{team_id}/usage",
    response_model=TeamUsage,
    response_model_exclude_unset=True,
    responses=NOT_FOUND_TEAM,
    response_description="Its tokens' requests and LLM tokens per UTC day and model.",
)
def team_usage(
    who: Who, store: Db, team_id: str, days: Annotated[int, Query(ge=1, le=366)] = 7
) -> dict[str, Any]:
    """A team's usage: its tokens' summed per UTC day, per model (admins; its own team
    managers)."""
    _require_team(who, Action.TEAM_READ, _team_id(team_id))
    try:  # (teams.usage reads the team first: unknown → 404, edited by hand → 409)
        return teams.usage(store, team_id, days, time.time())
    except UnknownTeam:
        raise ApiError(404, "not_found", f"no team with id {team_id!r}") from None


@policy_api.get(
    "",
    response_model=Policy,
    response_model_exclude_unset=True,
    response_description="The published routes.",
)
def policy(who: Who, store: Db) -> dict[str, Any]:
    """The published policy's routes (never secrets)."""
    _require(who, Action.POLICY)
    snapshot = store.load_policy()
    if snapshot is None:
        return {"version": 0, "routes": {}}
    return {
        "version": snapshot.version,
        "routes": {name: r.to_json() for name, r in sorted(snapshot.routes.items())},
        **snapshot.prices.to_json(),
    }


@audit_api.get("", response_model=AuditTail, response_description="The newest events.")
def audit_tail(
    who: Who, store: Db, limit: Annotated[int, Query(ge=1, le=1000)] = 50
) -> dict[str, Any]:
    """The newest `limit` audit events, oldest first (admin tokens only: else 403)."""
    _require(who, Action.AUDIT)
    return {"events": audit.tail(store, limit)}


# --- secret scanning -----------------------------------------------------------------------

# No bearer token: GitHub's signature over the body is the credential (checked before the
# body is parsed or anything is looked up).
scanning_api = APIRouter(
    prefix="/v1/secret-scanning", tags=["secret scanning"], responses=SCANNING_ERRORS
)


@scanning_api.post(
    "",
    response_model=LeakFeedback,
    response_description="The feedback array: one label per match, in the report's order.",
    openapi_extra={
        "security": [],
        "parameters": [
            {
                "name": name,
                "in": "header",
                "required": True,
                "description": description,
                "schema": {"type": "string", "maxLength": limit},
            }
            for name, description, limit in (
                (
                    "Github-Public-Key-Identifier",
                    "the `key_identifier` of the GitHub key that signed the body",
                    secret_scanning.MAX_KEY_ID,
                ),
                (
                    "Github-Public-Key-Signature",
                    "base64 of the DER ECDSA P-256 SHA-256 signature over the raw body",
                    secret_scanning.MAX_SIGNATURE,
                ),
            )
        ],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": leak_report_schema()}},
        },
    },
)
async def secret_scanning_report(request: Request) -> Any:
    """A GitHub secret scanning report (docs/security.md#when-a-key-leaks): each secret of
    ours in it is revoked (or, with `on_leak: notify` in the policy, kept) and audited as
    `token.leaked`. The signature headers are the credential: GitHub's keys are those in
    `--secret-scanning-keys`."""
    keys_file: leaks.KeysFile | None = request.app.state.scanning_keys
    failures: FailureLimiter | None = request.app.state.failures
    body = await request.body()
    try:
        if keys_file is None:
            raise BadSignature("secret scanning is off: this server has no --secret-scanning-keys")
        key_ids = request.headers.getlist(secret_scanning.KEY_ID_HEADER)
        signatures = request.headers.getlist(secret_scanning.SIGNATURE_HEADER)
        if len(key_ids) > 1 or len(signatures) > 1:
            raise BadSignature("signature headers given more than once")
        secret_scanning.verify(
            keys_file.keys(),
            key_ids[0] if key_ids else None,
            signatures[0] if signatures else None,
            body,
        )
    except BadSignature as e:
        address = request.client.host if request.client else ""
        if failures is not None:
            if failures.retry_after(address) is not None:
                raise ApiError(429, "rate_limited", "too many bad signatures; retry later") from e
            failures.failed(address)
        leaks.log.warning("secret scanning report from %s refused: %s", address, e)
        raise ApiError(401, "unauthorized", str(e)) from e
    matches = secret_scanning.parse_report(body)
    handled = await run_in_threadpool(
        leaks.report,
        request.app.state.store,
        matches,
        actor=leaks.GITHUB_ACTOR,
        confirm=2.0,
    )
    for warning in handled.warnings:
        leaks.log.warning("%s", warning)
    return handled.feedback


def _reported(unconfirmed: tuple[str, ...], warnings: tuple[str, ...]) -> dict[str, Any]:
    """What a change reports besides its result: the live servers that did not confirm it
    within 2 s (they may still accept an old secret or record for a moment), and warnings
    (e.g. its audit event was not written)."""
    return {"unconfirmed": list(unconfirmed), "warnings": list(warnings)}


def _cursor_text(position: float | None) -> str | None:
    """A page cursor as `next_cursor` gives it: the creation position, as text (a whole
    number as one, without `.0`); `_cursor` reads it back."""
    if position is None:
        return None
    return str(int(position)) if position.is_integer() else repr(position)


def _cursor(text: str | None) -> float | None:
    """A page cursor (a creation position, as `next_cursor` gave it); 400 when it is not one."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ApiError(400, "invalid_request", "cursor: give the next_cursor of the page before")
    return value


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

    @app.exception_handler(TeamExists)
    async def team_exists(request: Request, e: TeamExists) -> JSONResponse:
        return reply(409, "conflict", str(e))

    @app.exception_handler(TeamHasTokens)
    async def team_has_tokens(request: Request, e: TeamHasTokens) -> JSONResponse:
        message = str(e).replace("pass --revoke-tokens", "pass revoke_tokens=true")
        return reply(409, "conflict", message)

    @app.exception_handler(UsageError)
    async def usage(request: Request, e: UsageError) -> JSONResponse:
        return reply(400, "invalid_request", str(e))

    @app.exception_handler(StoreError)
    async def store_error(request: Request, e: StoreError) -> JSONResponse:
        if isinstance(e, MalformedRecord):  # a key edited by hand
            return reply(409, "malformed_record", f"{e}; fix it by hand (docs/redis.md)")
        if isinstance(e, StoreUnavailable):
            return reply(503, "unavailable", "Redis cannot be reached; retry later")
        return reply(503, "unavailable", f"Redis did not do it: {e}")

    @app.exception_handler(Exception)
    async def crashed(request: Request, e: Exception) -> JSONResponse:
        # (runs outside the middleware: the security headers are added here)
        response = reply(500, "internal_error", "the server failed; see its log")
        response.headers.update(SECURITY_HEADERS)
        return response
