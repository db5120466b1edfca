"""A token's record, pure: what Redis knows about one token (never the token itself).

The field layout is the documented Redis data model (docs/redis.md): the store
reads and writes it, this module gives it meaning and checks records edited by hand.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from extauthz.core.budget import Budget
from extauthz.core.cidrs import AllowedCidrs
from extauthz.core.credentials import MAX_NAME_LENGTH
from extauthz.core.llm import check_model_patterns
from extauthz.core.rate_limit import RateLimit
from extauthz.core.token_limit import TokenLimit
from extauthz.errors import MalformedRecord, shown

# What a record edited by hand may hold: its values become header values (subject, scopes)
# and terminal output, so they are visible ASCII (id, list items) or printable text (name).
_VISIBLE = re.compile(r"[!-~]{1,128}", re.ASCII)
_LIST_FIELD = re.compile(r"[ !-~]{0,4096}", re.ASCII)
MAX_UNIX_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z: the last second a date can show
TEAM_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}", re.ASCII)
TEAM_ID_RULE = "1-63 of a-z, 0-9 and '-', not starting with '-'"

# A token is a model token (field `kind` absent or `model`: valid at model routes only) or a
# management token (`kind: management`: valid at the management API only). The management
# scopes are what a management token carries; a model token never holds them.
MODEL = "model"
MANAGEMENT = "management"
ADMIN_SCOPE = "admin"
MANAGER_SCOPE = "tokens:manage"
MANAGEMENT_SCOPES = frozenset({ADMIN_SCOPE, MANAGER_SCOPE})


def kind_of(scopes: frozenset[str]) -> str:
    """The kind a token with these scopes has: management when it holds a management scope."""
    return MANAGEMENT if scopes & MANAGEMENT_SCOPES else MODEL


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """What Redis knows about one token (never the token itself)."""

    id: str
    routes: frozenset[str]  # route names, or "*" for every route
    scopes: frozenset[str]
    expires_at: int | None = None  # unix seconds
    name: str = ""
    created_at: int | None = None
    rate_limit: RateLimit | None = None
    # unix seconds when Redis will expire the key (its TTL when it was read): a key given a
    # TTL by hand (EXPIRE) stops working then, even before Redis gets round to deleting it
    lapses_at: float | None = field(default=None, compare=False)
    # unix seconds of its last use, as the usage meter last wrote it (not a hash field)
    last_used: int | None = field(default=None, compare=False)
    kind: str = MODEL  # MODEL or MANAGEMENT (see above)
    # LLM models it may use on `api: openai` routes: names and `prefix*`; None: any
    models: frozenset[str] | None = None
    # LLM tokens (prompt + completion) it may use per window, on `api: openai` routes
    token_limit: TokenLimit | None = None
    team: str | None = None  # the team it belongs to (its models and limits apply too)
    budget: Budget | None = None  # USD of LLM use per window, priced (docs/llm.md)
    allowed_cidrs: AllowedCidrs | None = None  # client networks it may be used from; None: any

    @property
    def management(self) -> bool:
        return self.kind == MANAGEMENT

    def grants_route(self, route: str) -> bool:
        return route in self.routes or "*" in self.routes

    def expired(self, now: float) -> bool:
        return now >= self.valid_until()

    def valid_until(self) -> float:
        """The first moment the token no longer works (inf: never)."""
        until = float("inf") if self.expires_at is None else float(self.expires_at)
        return until if self.lapses_at is None else min(until, self.lapses_at)

    def to_json(self) -> dict[str, Any]:
        """The record as the CLI and the management API show it (never the secret, never
        its hash)."""
        return {
            "id": self.id,
            "name": self.name,
            "routes": sorted(self.routes),
            "scopes": sorted(self.scopes),
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "rate_limit": str(self.rate_limit) if self.rate_limit else None,
            "last_used": self.last_used,
            "kind": self.kind,
            "models": None if self.models is None else sorted(self.models),
            "token_limit": str(self.token_limit) if self.token_limit else None,
            "team": self.team,
            "budget": str(self.budget) if self.budget else None,
            "allowed_cidrs": self.allowed_cidrs.texts() if self.allowed_cidrs else None,
        }

    def to_fields(self) -> dict[str, str]:
        """The Redis hash fields, as documented in docs/redis.md."""
        fields = {
            "id": self.id,
            "routes": ",".join(sorted(self.routes)),
            "scopes": ",".join(sorted(self.scopes)),
        }
        if self.name:
            fields["name"] = self.name
        if self.created_at is not None:
            fields["created_at"] = str(self.created_at)
        if self.expires_at is not None:
            fields["expires_at"] = str(self.expires_at)
        if self.rate_limit is not None:
            fields["rate_limit"] = str(self.rate_limit)
        if self.kind != MODEL:  # (a model token's record stays as it always was)
            fields["kind"] = self.kind
        if self.models is not None:
            fields["models"] = ",".join(sorted(self.models))
        if self.token_limit is not None:
            fields["token_limit"] = str(self.token_limit)
        if self.team is not None:
            fields["team"] = self.team
        if self.budget is not None:
            fields["budget"] = str(self.budget)
        if self.allowed_cidrs is not None:
            fields["allowed_cidrs"] = str(self.allowed_cidrs)
        return fields

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> TokenRecord:
        """Read a record from its Redis hash fields; raise MalformedRecord if it is off-shape.

        Records may be written by hand, so every value is checked for what it becomes: the id
        and the list items are visible ASCII of at most 128 characters (they become header
        values), the name printable text of at most 256, the times unix seconds up to the
        year 9999. Bytes that were not UTF-8 arrive as lone surrogates and fail these checks.
        """
        token_id = fields.get("id", "").strip(" ")
        if not token_id:
            raise MalformedRecord("token record has no 'id' field")
        if not _VISIBLE.fullmatch(token_id):
            raise MalformedRecord(
                f"token record id {shown(token_id, 64)}: not 1-128 visible ASCII characters"
            )
        if "routes" not in fields:
            raise MalformedRecord(f"token record {token_id!r} has no 'routes' field")
        name = fields.get("name", "")
        if len(name) > MAX_NAME_LENGTH or not name.isprintable():
            raise MalformedRecord(
                f"token record {token_id!r}: 'name' is not printable text of at most "
                f"{MAX_NAME_LENGTH} characters"
            )
        kind = fields.get("kind", "").strip(" ") or MODEL
        if kind not in (MODEL, MANAGEMENT):
            raise MalformedRecord(
                f"token record {token_id!r}: 'kind' is not {MODEL} or {MANAGEMENT}: "
                f"{shown(kind, 64)}"
            )
        owner = f"token record {token_id!r}"
        return cls(
            id=token_id,
            kind=kind,
            routes=list_field(fields, "routes", owner),
            scopes=list_field(fields, "scopes", owner),
            expires_at=int_field(fields, "expires_at", owner),
            name=name,
            created_at=int_field(fields, "created_at", owner),
            rate_limit=rate_limit_field(fields, owner),
            models=models_field(fields, owner),
            token_limit=token_limit_field(fields, owner),
            team=team_field(fields, owner),
            budget=budget_field(fields, owner),
            allowed_cidrs=cidrs_field(fields, owner),
        )


def usable_id(text: str) -> bool:
    """Whether a record's id is one a record may have (1-128 visible ASCII characters)."""
    return _VISIBLE.fullmatch(text.strip(" ")) is not None


def split_list(value: str) -> frozenset[str]:
    """Split a list field: items separated by commas and/or spaces."""
    return frozenset(value.replace(",", " ").split(" ")) - {""}


def list_field(fields: Mapping[str, str], key: str, owner: str) -> frozenset[str]:
    raw = fields.get(key, "")
    items = split_list(raw) if _LIST_FIELD.fullmatch(raw) else None
    if items is None or not all(_VISIBLE.fullmatch(item) for item in items):
        raise MalformedRecord(
            f"{owner}: {key!r} is not a list of visible ASCII names "
            "(comma or space separated, each at most 128 characters, 4096 in all)"
        )
    return items


def int_field(fields: Mapping[str, str], key: str, owner: str) -> int | None:
    raw = fields.get(key, "").strip(" ")
    if not raw:
        return None
    try:
        value = int(float(raw)) if raw.isascii() else None
    except (ValueError, OverflowError):
        value = None
    if value is None or not 0 <= value <= MAX_UNIX_SECONDS:
        raise MalformedRecord(
            f"{owner}: {key!r} is not unix seconds up to the year 9999: {shown(raw, 64)}"
        )
    return value


def models_field(fields: Mapping[str, str], owner: str) -> frozenset[str] | None:
    """`models`: absent, any model; else names and `prefix*` patterns, comma- or
    space-separated (a present but empty field allows no model)."""
    if "models" not in fields:
        return None
    items = list_field(fields, "models", owner)
    try:
        return frozenset(check_model_patterns(items))
    except ValueError as e:
        raise MalformedRecord(f"{owner}: {e}") from None


def rate_limit_field(fields: Mapping[str, str], owner: str) -> RateLimit | None:
    raw = fields.get("rate_limit", "").strip(" ")
    if not raw:
        return None
    try:
        return RateLimit.parse(raw)
    except ValueError:
        raise MalformedRecord(
            f"{owner}: 'rate_limit' is not N/UNIT (e.g. 600/m): {shown(raw, 64)}"
        ) from None


def token_limit_field(fields: Mapping[str, str], owner: str) -> TokenLimit | None:
    raw = fields.get("token_limit", "").strip(" ")
    if not raw:
        return None
    try:
        return TokenLimit.parse(raw)
    except ValueError:
        raise MalformedRecord(
            f"{owner}: 'token_limit' is not N/UNIT (e.g. 100000/d): {shown(raw, 64)}"
        ) from None


def budget_field(fields: Mapping[str, str], owner: str) -> Budget | None:
    raw = fields.get("budget", "").strip(" ")
    if not raw:
        return None
    try:
        return Budget.parse(raw)
    except ValueError:
        raise MalformedRecord(
            f"{owner}: 'budget' is not AMOUNT/UNIT in USD (e.g. 50/mo): {shown(raw, 64)}"
        ) from None


def team_field(fields: Mapping[str, str], owner: str) -> str | None:
    """`team`: absent or empty, no team; else a team id (docs/teams.md)."""
    raw = fields.get("team", "").strip(" ")
    if not raw:
        return None
    if not TEAM_ID.fullmatch(raw):
        raise MalformedRecord(
            f"{owner}: 'team' is not a team id ({TEAM_ID_RULE}): {shown(raw, 64)}"
        )
    return raw


def cidrs_field(fields: Mapping[str, str], owner: str) -> AllowedCidrs | None:
    """`allowed_cidrs`: absent or empty, any address; else networks, comma- or
    space-separated (docs/tokens.md#allowed-addresses), parsed once here."""
    raw = fields.get("allowed_cidrs", "")
    if not raw.strip(" "):
        return None
    if len(raw) > 4096:
        raise MalformedRecord(f"{owner}: 'allowed_cidrs' is longer than 4096 characters")
    try:
        return AllowedCidrs.parse(sorted(split_list(raw), key=raw.find))
    except ValueError as e:
        raise MalformedRecord(f"{owner}: 'allowed_cidrs': {e}") from None
