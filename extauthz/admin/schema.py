"""What the management API answers, as the OpenAPI document states it: a pydantic model for
each success body (api.py serializes every answer through its model, so the API cannot send
a field the document does not name), and the error responses with the one error shape.

The models mirror what the code builds (TokenRecord.to_json, tokens.usage, audit.tail,
RoutePolicy.to_json); a field added there and not here makes the answer a 500, which the
API's tests catch (tests/integration/test_openapi_conformance.py,
tests/unit/test_openapi_document.py).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

from extauthz.core.secret_scanning import MAX_FIELD, MAX_MATCHES

UnixSeconds = int


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- errors -------------------------------------------------------------------------------


class Error(_Answer):
    """Every error: a code for programs, a sentence for people."""

    error: str
    message: str


class InvalidRequest(Error):
    error: Literal["invalid_request"]


class Unauthorized(Error):
    error: Literal["unauthorized"]


class Forbidden(Error):
    error: Literal["forbidden"]


class NotFound(Error):
    error: Literal["not_found"]


class MalformedRecordError(Error):
    error: Literal["malformed_record"]


class RateLimited(Error):
    error: Literal["rate_limited"]


class Unavailable(Error):
    error: Literal["unavailable"]


class TeamConflict(Error):
    """A team change that cannot be made as things are, or a record edited by hand."""

    error: Literal["conflict", "malformed_record"]


Responses = dict[int | str, dict[str, Any]]

# The statuses any /v1/ operation may answer: the body limit and authentication come before
# every endpoint, and every endpoint reads Redis.
COMMON_ERRORS: Responses = {
    400: {
        "model": InvalidRequest,
        "description": "A parameter or body field the API does not take (the message names "
        "it), a body over 64 KiB, or a body sent chunked (without a Content-Length). Nothing "
        "was written.",
    },
    401: {
        "model": Unauthorized,
        "description": "No bearer token, or one that is not a valid, unexpired token.",
    },
    403: {
        "model": Forbidden,
        "description": "A model token (only management tokens call this API), or an action "
        "the caller's token may not take.",
    },
    409: {
        "model": MalformedRecordError,
        "description": "A record in Redis is not in the documented shape (edited by hand, "
        "docs/redis.md): fix it by hand, or revoke the token.",
    },
    429: {
        "model": RateLimited,
        "description": "Too many failed authentications from this client address "
        "(`--auth-failure-burst`, `--auth-failure-rate`); a valid token is never refused.",
    },
    503: {
        "model": Unavailable,
        "description": "Redis cannot be reached or refused the command, or the server "
        "holds as many connections as it may (`--admin-max-connections`); retry later.",
    },
}

NOT_FOUND: Responses = {
    404: {
        "model": NotFound,
        "description": "No token with this id, or one the caller could not have created "
        "(a manager is not told it exists).",
    },
}


# --- tokens -------------------------------------------------------------------------------


class Token(_Answer):
    """A token's record (never its secret, never its hash)."""

    id: str
    name: str
    routes: list[str] = Field(description='route names, or "*" for every route')
    scopes: list[str]
    created_at: UnixSeconds | None
    expires_at: UnixSeconds | None = Field(description="null: never")
    rate_limit: str | None = Field(description="its own request limit, e.g. 600/m")
    last_used: UnixSeconds | None = Field(description="as the usage meter last wrote it")
    kind: Literal["model", "management"]
    models: list[str] | None = Field(description="LLM models (names, prefix*); null: any")
    token_limit: str | None = Field(description="its own LLM token limit, e.g. 100000/d")
    team: str | None = Field(description="the team it belongs to; null: none")
    budget: str | None = Field(description="its own budget in USD, e.g. $50/mo")
    allowed_cidrs: list[str] | None = Field(
        description="client networks it may be used from (elsewhere: 403); null: any"
    )


class TokenPage(_Answer):
    tokens: list[Token]
    next_cursor: str | None = Field(
        description="the `cursor` of the next page; null on the last page"
    )


class Reported(_Answer):
    unconfirmed: list[str] = Field(
        description="live servers that did not confirm the change within 2 s (they may "
        "still accept the old secret or record for a moment)"
    )
    warnings: list[str] = Field(
        description="what went wrong around a change that was made all the same: no replica "
        "confirmed it, its audit event was not written"
    )


class IssuedToken(Token):
    """A new token: its record and its secret, which no other answer ever holds."""

    token: str = Field(description="the secret (eat_...): shown once")
    warnings: list[str] = Field(
        description="e.g. a route not in the published policy, its audit event not written"
    )


class ChangedToken(Token, Reported):
    """The record as the change left it."""


class RotatedToken(Token, Reported):
    """The record, and the new secret (the old one stops at once, or after `grace`)."""

    token: str = Field(description="the new secret (eat_...): shown once")


class Revocation(Reported):
    """A revocation done, with something the caller must know."""

    id: str
    revoked: int = Field(description="secrets deleted (the token's, and one in rotation grace)")


class ModelUsage(_Answer):
    """One model's use on one day: requests, and LLM tokens when responses were counted."""

    requests: int
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    estimated_completion_tokens: int | None = None
    cached_prompt_tokens: int | None = None
    reasoning_tokens: int | None = None
    cost_usd: float | None = Field(
        default=None, description="what its counted responses cost, at the policy's prices"
    )


class UsageDay(_Answer):
    date: str = Field(description="a UTC day, YYYY-MM-DD")
    allowed: int
    rate_limited: int
    models: dict[str, ModelUsage] | None = Field(
        default=None, description="per LLM model; absent when no model was used"
    )


class Usage(_Answer):
    id: str
    last_used: UnixSeconds | None
    days: list[UsageDay] = Field(description="oldest first, today (UTC) last")


# --- teams --------------------------------------------------------------------------------


class Team(_Answer):
    """A team's record (docs/teams.md): what its tokens share."""

    id: str
    name: str
    models: list[str] | None = Field(description="LLM models its tokens may use; null: any")
    rate_limit: str | None = Field(description="requests per window, for all its tokens")
    token_limit: str | None = Field(description="LLM tokens per window, for all its tokens")
    created_at: UnixSeconds | None
    budget: str | None = Field(description="USD per window, for all its tokens, e.g. $500/mo")
    allowed_cidrs: list[str] | None = Field(
        description="client networks its tokens may be used from (elsewhere: 403); null: any"
    )
    tokens: int | None = Field(default=None, description="how many tokens it has")


class ChangedTeam(Team):
    warnings: list[str] = Field(description="e.g. its audit event not written")


class TeamDeleted(_Answer):
    id: str
    deleted: Literal[True]
    warnings: list[str] = Field(description="e.g. a revoked token's audit event not written")


class TeamList(_Answer):
    teams: list[Team] = Field(description="in creation order")


class TeamUsage(_Answer):
    id: str
    tokens: int = Field(description="its tokens now (their usage is summed)")
    days: list[UsageDay] = Field(description="oldest first, today (UTC) last")


NOT_FOUND_TEAM: Responses = {
    404: {
        "model": NotFound,
        "description": "No team with this id, or one the caller may not see (a team manager "
        "sees its own team only).",
    },
}
TEAM_CONFLICT: Responses = {
    409: {
        "model": TeamConflict,
        "description": "`conflict`: a team with this id exists (create), or the team still "
        "has tokens (delete without `revoke_tokens`); `malformed_record`: a record edited "
        "by hand.",
    },
}


# --- policy and audit ---------------------------------------------------------------------


class MatchRule(_Answer):
    path_prefix: str
    host: str | None = None


class Jwt(_Answer):
    issuer: str
    audiences: list[str]
    jwks_uri: str | None
    jwks_file: str | None
    scopes_claim: str
    subject_claim: str
    models_claim: str | None
    team_claim: str | None
    algorithms: list[str]
    leeway_seconds: int
    forward_claims: list[list[str]] = Field(description="[claim path, header] pairs")


class Route(_Answer):
    """A published route's rules (docs/policy.md); a setting at its default is absent."""

    access: Literal["public", "protected", "private"]
    credentials: list[str]
    credentials_listed: bool | None = None
    basic_username: str | None = None
    scopes: list[str] | None = None
    max_token_ttl: int | None = Field(default=None, description="seconds")
    rate_limit: str | None = None
    match: list[MatchRule] | None = None
    api: str | None = None
    models: list[str] | None = None
    token_limit: str | None = None
    stream_usage: str | None = None
    default_max_tokens: int | None = None
    budget: str | None = None
    jwt: Jwt | None = None


class ModelPrice(_Answer):
    """USD per million tokens, as decimal text."""

    input: str
    output: str
    cached_input: str


class Policy(_Answer):
    version: int = Field(description="0: no policy was ever published")
    routes: dict[str, Route]
    prices: dict[str, ModelPrice] | None = Field(
        default=None, description="per model name or prefix*: what budgets are counted with"
    )
    unpriced: str | None = Field(
        default=None, description="deny (403 model_unpriced under a budget) or free"
    )


class AuditEvent(_Answer):
    id: str = Field(description="the Redis stream id")
    time: UnixSeconds | None = Field(description="null when an event edited by hand has none")
    actor: str = Field(description="cli:<user>, or the id of the token that called the API")
    action: str = Field(description="e.g. token.create")
    target: str
    detail: dict[str, Any]


class AuditTail(_Answer):
    events: list[AuditEvent] = Field(description="oldest first")


# --- secret scanning (docs/security.md#when-a-key-leaks) ---------------------------------


class LeakLabel(_Answer):
    token_hash: str = Field(description="SHA-256 of the raw token, lowercase hex")
    token_type: str = Field(description="the match's type, as GitHub sent it")
    label: Literal["true_positive", "false_positive"] = Field(
        description="true_positive: a secret of ours (revoked, or kept with on_leak: notify)"
    )


class LeakFeedback(RootModel[list[LeakLabel]]):
    """GitHub's feedback array: one entry per match reported, in its order."""


def leak_report_schema() -> dict[str, Any]:
    """The request body GitHub sends: a JSON array of matches (other keys are ignored)."""
    return {
        "type": "array",
        "maxItems": MAX_MATCHES,
        "items": {
            "type": "object",
            "required": ["token"],
            "properties": {
                name: {"type": "string", "maxLength": limit}
                if name == "token"
                else {"type": ["string", "null"], "maxLength": limit}
                for name, limit in MAX_FIELD.items()
            },
        },
    }


SCANNING_ERRORS: Responses = {
    400: COMMON_ERRORS[400]
    | {
        "description": "Signed, but not a report: not a JSON array of objects with a string "
        "`token` (the message names the entry), a field too long, more than 1,000 matches, a "
        "body over 64 KiB or sent chunked. Nothing was looked up.",
    },
    401: {
        "model": Unauthorized,
        "description": "No or a bad `Github-Public-Key-Signature`, or a key id not in "
        "`--secret-scanning-keys` (or none configured). Nothing was looked up.",
    },
    429: COMMON_ERRORS[429]
    | {
        "description": "Too many bad signatures from this client address "
        "(`--auth-failure-burst`, `--auth-failure-rate`); a valid signature is never refused.",
    },
    503: COMMON_ERRORS[503],
}
