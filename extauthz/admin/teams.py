"""Team lifecycle (docs/teams.md): create, update, show, list, usage, delete. Each change is
audited; the decision path sees it within the same second as a token change (keyspace
notifications on the team's key drop it from every server's cache)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from extauthz.admin import audit, tokens
from extauthz.core.budget import Budget
from extauthz.core.rate_limit import RateLimit
from extauthz.core.team_record import TeamRecord
from extauthz.core.token_limit import TokenLimit
from extauthz.core.token_record import TEAM_ID, TEAM_ID_RULE
from extauthz.errors import InvalidValue, MalformedRecord, UnknownToken
from extauthz.storage.store import Store, utc_date
from extauthz.storage.team_index import TeamIndex
from extauthz.storage.token_index import TokenIndex

UNCHANGED: Any = object()  # update: a field not given


def limit_change(text: str | None, parse: Callable[[str], Any], keep: Any = UNCHANGED) -> Any:
    """A limit as the CLI or an API body gives it: absent → `keep`, `none` → None (no
    limit), else `parse(text)`."""
    if text is None:
        return keep
    return None if text == "none" else parse(text)


def check_team_id(team_id: str) -> str:
    if not TEAM_ID.fullmatch(team_id):
        raise InvalidValue("team", team_id, TEAM_ID_RULE)
    return team_id


@dataclass(frozen=True)
class Changed:
    """A team after a change, and what went wrong around it (the audit event not written)."""

    record: TeamRecord
    warnings: tuple[str, ...] = ()


def _also(warning: str | None) -> tuple[str, ...]:
    return () if warning is None else (warning,)


def create(
    store: Store,
    team_id: str,
    name: str = "",
    models: Iterable[str] | None = None,
    rate_limit: RateLimit | None = None,
    token_limit: TokenLimit | None = None,
    now: float = 0,
    actor: str | None = None,
    budget: Budget | None = None,
    allowed_cidrs: Iterable[str] | None = None,
) -> Changed:
    """A new team (TeamExists when the id is taken); `allowed_cidrs`: the client networks
    its tokens may be used from (None: any)."""
    tokens.check_name(name)
    record = TeamRecord(
        check_team_id(team_id),
        name,
        None if models is None else tokens.check_models(models),
        rate_limit,
        token_limit,
        int(now),
        budget,
        None if allowed_cidrs is None else tokens.check_cidrs(allowed_cidrs),
    )
    TeamIndex(store).create(record)
    audited = audit.record(store, actor, "team.create", team_id, described(record), now)
    return Changed(record, _also(audited))


def update(
    store: Store,
    team_id: str,
    *,
    name: str = UNCHANGED,
    models: Iterable[str] | None = UNCHANGED,
    rate_limit: RateLimit | None = UNCHANGED,
    token_limit: TokenLimit | None = UNCHANGED,
    now: float = 0,
    actor: str | None = None,
    budget: Budget | None = UNCHANGED,
    allowed_cidrs: Iterable[str] | None = UNCHANGED,
) -> Changed:
    """Change what is given (None removes models or a limit); every server applies it within
    a second."""
    check_team_id(team_id)
    changes: dict[str, Any] = {}
    if name is not UNCHANGED:
        tokens.check_name(name)
        changes["name"] = name
    if models is not UNCHANGED:
        changes["models"] = None if models is None else tokens.check_models(models)
    if rate_limit is not UNCHANGED:
        changes["rate_limit"] = rate_limit
    if token_limit is not UNCHANGED:
        changes["token_limit"] = token_limit
    if budget is not UNCHANGED:
        changes["budget"] = budget
    if allowed_cidrs is not UNCHANGED:
        cidrs = allowed_cidrs
        changes["allowed_cidrs"] = None if cidrs is None else tokens.check_cidrs(cidrs)
    record = TeamIndex(store).update(team_id, lambda current: replace(current, **changes))
    audited = audit.record(store, actor, "team.update", team_id, described(record), now)
    return Changed(record, _also(audited))


def show(store: Store, team_id: str) -> TeamRecord:
    return TeamIndex(store).get(check_team_id(team_id))


def listing(store: Store) -> Iterable[TeamRecord | MalformedRecord]:
    return TeamIndex(store).stream()


def members(store: Store, team_id: str) -> list[str]:
    """The ids of the team's tokens, each checked against its record (ids of tokens revoked,
    expired or moved to another team are dropped from the team's set)."""
    index, team_index = TokenIndex(store), TeamIndex(store)
    found: list[str] = []
    gone: list[str] = []
    for token_id in team_index.member_ids(team_id):
        try:
            record = index.get(token_id).record
        except (UnknownToken, MalformedRecord):
            record = None
        (found if record is not None and record.team == team_id else gone).append(token_id)
    team_index.forget(team_id, gone)
    return found


def usage(store: Store, team_id: str, days: int, now: float) -> dict[str, Any]:
    """The team's usage: its tokens' summed per UTC day, per model (requests, LLM tokens)."""
    show(store, team_id)
    ids = members(store, team_id)
    summed: list[dict[str, Any]] = []
    for token_id in ids:
        for i, day in enumerate(tokens.usage(store, token_id, days, now)["days"]):
            if len(summed) <= i:
                summed.append({"date": day["date"], "allowed": 0, "rate_limited": 0})
            total = summed[i]
            total["allowed"] += day["allowed"]
            total["rate_limited"] += day["rate_limited"]
            for model, counts in day.get("models", {}).items():
                into = total.setdefault("models", {}).setdefault(model, {})
                for key, value in counts.items():
                    into[key] = into.get(key, 0) + value
                    if key == "cost_usd":  # (dollars to the micro-dollar, as counted)
                        into[key] = round(into[key], 6)
    if not ids:
        today = int(now // 86400)
        summed = [
            {"date": utc_date(d), "allowed": 0, "rate_limited": 0}
            for d in range(today - days + 1, today + 1)
        ]
    return {"id": team_id, "tokens": len(ids), "days": summed}


def delete(
    store: Store,
    team_id: str,
    revoke_tokens: bool = False,
    now: float = 0,
    actor: str | None = None,
) -> Changed:
    """Delete the team: refused while it has tokens (TeamHasTokens), unless `revoke_tokens`
    (each revoked and audited first)."""
    record = show(store, team_id)
    warnings: tuple[str, ...] = ()
    if revoke_tokens:
        for token_id in members(store, team_id):
            warnings += tokens.revoke(store, token_id, actor=actor).warnings
    TeamIndex(store).delete(team_id, lambda: members(store, team_id))
    audited = audit.record(store, actor, "team.delete", team_id, {"name": record.name}, now)
    return Changed(record, warnings + _also(audited))


def described(record: TeamRecord) -> dict[str, Any]:
    """A team for the audit log."""
    shown = record.to_json()
    shown.pop("id")
    return shown
