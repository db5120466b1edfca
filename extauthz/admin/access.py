"""Who may do what in the management plane, pure: one function every endpoint asks (the
contract: docs/design.md#management-plane-authorization).

- Only a management token (record `kind: management`) calls the management API; a model
  token never does, whatever scopes it holds.
- A management token with scope `admin` may do everything.
- Any other management token (scope `tokens:manage`) is a *manager*: it may create, and see
  and act on (read, update, rotate, revoke, usage), exactly the tokens it could have created:
  model tokens whose routes are within its own (`*` only if it has `*`) and whose expiry is
  no later than its own. A token it could not have created does not exist for it (404), so
  no id is confirmed; asking to create or change into one it may not is 403.
- A manager whose own token names a team (a *team manager*) manages exactly its team's
  tokens within those bounds, and makes tokens only in its team; a manager without a team
  makes and manages only tokens without one. It may read its team and the team's usage;
  other teams do not exist for it (404). Only an admin creates, changes or deletes teams.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from extauthz.core.token_record import ADMIN_SCOPE, MANAGER_SCOPE, MODEL, TokenRecord, kind_of


class Action(StrEnum):
    READ = "read"  # GET a token, or see it in a listing
    UPDATE = "update"
    ROTATE = "rotate"
    REVOKE = "revoke"
    USAGE = "usage"
    CREATE = "create"  # the target is the token as it would be made (or changed into)
    AUDIT = "audit"  # the audit log (no target)
    POLICY = "policy"  # the published routes (no target; never secrets)
    TEAM_READ = "team_read"  # a team's record, its tokens' count, its usage (target: team id)
    TEAM_WRITE = "team_write"  # create, update or delete a team (admin only)


class Verdict(StrEnum):
    ALLOW = "allow"
    NOT_FOUND = "not_found"  # 404: the target is not the caller's to know about
    FORBIDDEN = "forbidden"  # 403: the caller may not do this (it is not hiding anything)


@dataclass(frozen=True, slots=True)
class Manager:
    """An authenticated caller of the management API."""

    id: str
    admin: bool
    routes: frozenset[str]
    expires_at: int | None  # unix seconds; None: never
    team: str | None = None  # a team manager's team

    @classmethod
    def of(cls, record: TokenRecord) -> Manager | None:
        """The manager a token stands for; None when it may not call the API at all."""
        if not record.management or not record.scopes & {ADMIN_SCOPE, MANAGER_SCOPE}:
            return None
        expires = record.expires_at
        if record.lapses_at is not None:  # a key given a TTL by hand ends then
            # (read time + PTTL lands a millisecond either side of an EXPIREAT second: the
            # nearest second, or a token made with the manager's own expiry "outlives" it)
            lapse = round(record.lapses_at)
            expires = lapse if expires is None else min(expires, lapse)
        return cls(record.id, ADMIN_SCOPE in record.scopes, record.routes, expires, record.team)


@dataclass(frozen=True, slots=True)
class Target:
    """What a decision looks at in a token: its routes, scopes and expiry."""

    routes: frozenset[str]
    scopes: frozenset[str]
    expires_at: int | None
    team: str | None = None

    @classmethod
    def of(cls, record: TokenRecord) -> Target:
        # a record's kind, or its scopes, make it a management token: either is enough
        scopes = record.scopes | ({ADMIN_SCOPE} if record.management else frozenset())
        return cls(record.routes, scopes, record.expires_at, record.team)


def could_create(who: Manager, target: Target) -> bool:
    """Whether `who` could have made a token like `target`."""
    if who.admin:
        return True
    if kind_of(target.scopes) != MODEL or target.team != who.team:
        return False
    if "*" not in who.routes and ("*" in target.routes or not target.routes <= who.routes):
        return False
    if who.expires_at is None:
        return True
    return target.expires_at is not None and target.expires_at <= who.expires_at


def decide(
    who: Manager, action: Action, target: Target | None = None, team: str | None = None
) -> Verdict:
    """The one authorization question of the management plane.

    CREATE: `target` is the token to be made, or what an update would make of one (check
    the current token with UPDATE first). Other token actions: `target` is the token as
    stored. AUDIT and POLICY take no target; TEAM_READ and TEAM_WRITE take the `team` id
    (TEAM_WRITE of a new team: None).
    """
    if action is Action.TEAM_READ:
        return Verdict.ALLOW if who.admin or team == who.team else Verdict.NOT_FOUND
    if action is Action.TEAM_WRITE:  # (team None: a new team)
        if who.admin:
            return Verdict.ALLOW
        return Verdict.FORBIDDEN if team is None or team == who.team else Verdict.NOT_FOUND
    if action is Action.AUDIT:
        return Verdict.ALLOW if who.admin else Verdict.FORBIDDEN
    if action is Action.POLICY:
        return Verdict.ALLOW
    if target is None:  # pragma: no cover (a programming error: fail closed)
        return Verdict.FORBIDDEN
    if could_create(who, target):
        return Verdict.ALLOW
    return Verdict.FORBIDDEN if action is Action.CREATE else Verdict.NOT_FOUND
