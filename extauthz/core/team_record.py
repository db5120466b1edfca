"""A team's record, pure: what a team's keys share (docs/teams.md).

`{prefix}team:<id>` is a hash like a token's record (docs/redis.md): `name`, `models`,
`rate_limit`, `token_limit`, `budget`, `created_at`. A token that names the team (its field `team`)
may use only the models both it and the team allow, and every limit of the team applies to
it too, pooled across the team's tokens and every process (core/limits.py, scope
`team:<id>`). Records may be edited by hand: every field is checked as a token's is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from extauthz.core.budget import Budget
from extauthz.core.cidrs import AllowedCidrs
from extauthz.core.credentials import MAX_NAME_LENGTH
from extauthz.core.rate_limit import RateLimit
from extauthz.core.token_limit import TokenLimit
from extauthz.core.token_record import (
    TEAM_ID,
    TEAM_ID_RULE,
    budget_field,
    cidrs_field,
    int_field,
    models_field,
    rate_limit_field,
    token_limit_field,
)
from extauthz.errors import MalformedRecord, shown


@dataclass(frozen=True, slots=True)
class TeamRecord:
    """What Redis knows about one team."""

    id: str
    name: str = ""
    models: frozenset[str] | None = None  # names and `prefix*`; None: any
    rate_limit: RateLimit | None = None  # requests per window, pooled over its tokens
    token_limit: TokenLimit | None = None  # LLM tokens per window, pooled over its tokens
    created_at: int | None = None
    budget: Budget | None = None  # USD of LLM use per window, pooled over its tokens
    allowed_cidrs: AllowedCidrs | None = None  # client networks its tokens may be used from

    def to_json(self) -> dict[str, Any]:
        """The record as the CLI and the management API show it."""
        return {
            "id": self.id,
            "name": self.name,
            "models": None if self.models is None else sorted(self.models),
            "rate_limit": str(self.rate_limit) if self.rate_limit else None,
            "token_limit": str(self.token_limit) if self.token_limit else None,
            "budget": str(self.budget) if self.budget else None,
            "created_at": self.created_at,
            "allowed_cidrs": self.allowed_cidrs.texts() if self.allowed_cidrs else None,
        }

    def to_fields(self) -> dict[str, str]:
        """The Redis hash fields, as documented in docs/redis.md (`id` included, so that a
        record copied to another key by hand is caught)."""
        fields = {"id": self.id}
        if self.name:
            fields["name"] = self.name
        if self.models is not None:
            fields["models"] = ",".join(sorted(self.models))
        if self.rate_limit is not None:
            fields["rate_limit"] = str(self.rate_limit)
        if self.token_limit is not None:
            fields["token_limit"] = str(self.token_limit)
        if self.budget is not None:
            fields["budget"] = str(self.budget)
        if self.created_at is not None:
            fields["created_at"] = str(self.created_at)
        if self.allowed_cidrs is not None:
            fields["allowed_cidrs"] = str(self.allowed_cidrs)
        return fields

    @classmethod
    def from_fields(cls, team_id: str, fields: Mapping[str, str]) -> TeamRecord:
        """Read the record of `team_id` from its hash fields; MalformedRecord if off-shape
        (an `id` field, where present, must be the key's)."""
        owner = f"team record {team_id!r}"
        if not TEAM_ID.fullmatch(team_id):
            raise MalformedRecord(f"{owner}: not a team id ({TEAM_ID_RULE})")
        stated = fields.get("id", team_id).strip(" ")
        if stated != team_id:
            raise MalformedRecord(f"{owner}: its 'id' field says {shown(stated, 64)}")
        name = fields.get("name", "")
        if len(name) > MAX_NAME_LENGTH or not name.isprintable():
            raise MalformedRecord(
                f"{owner}: 'name' is not printable text of at most {MAX_NAME_LENGTH} characters"
            )
        return cls(
            id=team_id,
            name=name,
            models=models_field(fields, owner),
            rate_limit=rate_limit_field(fields, owner),
            token_limit=token_limit_field(fields, owner),
            budget=budget_field(fields, owner),
            created_at=int_field(fields, "created_at", owner),
            allowed_cidrs=cidrs_field(fields, owner),
        )
