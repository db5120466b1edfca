"""Bulk tokens as JSON Lines: `token export` (never a secret) and `token import`.

One object per line: `id`, `routes`, `scopes`, optional `name`, `created_at`, `expires_at`
(unix seconds), `rate_limit` (`600/m`, or null), `models` (LLM models: names and
`prefix*`; absent or null: every model), `token_limit` (LLM tokens, `100000/d`, or
null), `budget` (USD of LLM use, `50/mo`, or null) and `team` (an existing team's id, or
null), and either `token` (the
null), `team` (an existing team's id, or null), `allowed_cidrs` (client networks, or
null: any address), and either `token` (the
secret, hashed on import) or `sha256` (its hash, as export writes it). A token with scope
`admin` or `tokens:manage` is a management token (kind follows from the scopes; export writes
`kind`, and an import line's `kind` must agree with its scopes). An import reads and
checks the whole file, then Redis (conflicts, caps, routes the synced policy does not have),
before it writes anything; what is
already there as the file says is skipped, so importing a file twice changes nothing.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from extauthz.admin.tokens import (
    Lifetime,
    check_cidrs,
    check_id,
    check_kind,
    check_llm_fields,
    check_models,
    check_name,
    check_routes,
    check_scopes,
    parse_budget,
    parse_rate_limit,
    parse_token_limit,
    unknown_routes,
)
from extauthz.core.budget import Budget
from extauthz.core.credentials import checksum_fails, token_hash
from extauthz.core.policy import PolicySnapshot
from extauthz.core.rate_limit import RateLimit
from extauthz.core.token_limit import TokenLimit
from extauthz.core.token_record import MAX_UNIX_SECONDS, TEAM_ID, TEAM_ID_RULE, TokenRecord
from extauthz.errors import BadImportLine, InvalidValue, MalformedRecord, TokenExists, UnknownRoute
from extauthz.storage.store import Store
from extauthz.storage.token_index import PAGE, ImportItem, TokenIndex

MAX_LINE_BYTES = 64 << 10
MAX_FILE_BYTES = 1 << 30
FIELDS = (
    "id",
    "routes",
    "scopes",
    "name",
    "created_at",
    "expires_at",
    "rate_limit",
    "models",
    "token_limit",
    "team",
    "budget",
    "kind",
    "allowed_cidrs",
)
_SHA256 = re.compile(r"[0-9a-f]{64}", re.ASCII)
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]{8,4096}=*", re.ASCII)  # what a Bearer token can be


def export_lines(store: Store, route: str | None = None) -> Iterator[str]:
    """One JSON line per indexed token (hash, never the secret), in creation order;
    malformed records are left out (`token list` shows them)."""
    from extauthz.admin.tokens import listing

    for digest, record in listing(store, route):
        if isinstance(record, MalformedRecord):
            continue
        line: dict[str, Any] = {"id": record.id, "routes": sorted(record.routes)}
        line["scopes"] = sorted(record.scopes)
        line["kind"] = record.kind  # (a model token given a management scope by hand stays one)
        if record.name:
            line["name"] = record.name
        line["created_at"] = record.created_at
        line["expires_at"] = record.expires_at
        if record.rate_limit is not None:
            line["rate_limit"] = str(record.rate_limit)
        if record.models is not None:
            line["models"] = sorted(record.models)
        if record.token_limit is not None:
            line["token_limit"] = str(record.token_limit)
        if record.team is not None:
            line["team"] = record.team
        if record.budget is not None:
            line["budget"] = str(record.budget)
        if record.allowed_cidrs is not None:
            line["allowed_cidrs"] = record.allowed_cidrs.texts()
        line["sha256"] = digest
        yield json.dumps(line, ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class Entry:
    line: int
    digest: str
    record: TokenRecord


@dataclass
class ImportPlan:
    """What an import writes (`items`) and leaves, with warnings (names only)."""

    items: list[ImportItem] = field(default_factory=list)
    unchanged: int = 0
    warnings: list[str] = field(default_factory=list)

    def count(self, action: str) -> int:
        return sum(1 for item in self.items if item.action == action)

    def summary(self, dry_run: bool) -> str:
        verb = "would write" if dry_run else "wrote"
        return (
            f"{verb} {len(self.items)} tokens: {self.count('create')} new, "
            f"{self.count('update')} updated, {self.count('replace')} replaced; "
            f"{self.unchanged} unchanged"
        )


def read_import_file(path: str, now: float) -> list[Entry]:
    """Every line of the file, checked (BadImportLine names the first bad line and field)."""
    entries: list[Entry] = []
    ids: dict[str, int] = {}
    digests: dict[str, int] = {}
    with _open_regular(path) as f:
        number = 0
        while raw := f.readline(MAX_LINE_BYTES + 1):
            number += 1
            if len(raw) > MAX_LINE_BYTES:
                raise BadImportLine(path, number, "", f"longer than {MAX_LINE_BYTES} bytes")
            if not raw.strip():
                continue
            entry = _entry(path, number, raw, now)
            for seen, key, what in ((ids, entry.record.id, "id"), (digests, entry.digest, "")):
                if key in seen:
                    same = f"id {entry.record.id!r}" if what else "secret"
                    raise BadImportLine(
                        path, number, what or "token", f"same {same} as line {seen[key]}"
                    )
                seen[key] = number
            entries.append(entry)
    return entries


def plan_import(
    store: Store,
    entries: list[Entry],
    path: str,
    now: float,
    replace: bool = False,
    allow_unknown_route: bool = False,
) -> ImportPlan:
    """Compare the entries with Redis: what to create, update, replace or leave.

    An id present with another secret is a conflict unless `replace`; a secret present
    under another id always is; a life beyond a route's max_token_ttl is an error; so are a
    route the synced policy does not have (unless `allow_unknown_route`: then a warning)
    and LLM fields without an LLM route, as for `token create`.
    """
    index, policy, plan = TokenIndex(store), store.load_policy(), ImportPlan()
    unknown: dict[str, int] = {}
    teams: dict[str, bool] = {}  # team id → it exists (each looked up once)
    for start in range(0, len(entries), PAGE):
        batch = entries[start : start + PAGE]
        current = index.known(e.record.id for e in batch)
        stored = index.records([e.digest for e in batch] + [d for d in current.values()])
        for entry in batch:
            record = entry.record
            for route in _checked_routes(path, entry, policy, allow_unknown_route):
                unknown[route] = unknown.get(route, 0) + 1
            team = record.team
            if team is not None:
                if team not in teams:
                    teams[team] = store.team_record(team) is not None
                if not teams[team]:
                    raise BadImportLine(
                        path, entry.line, "team", f"no team {team!r}: `extauthz team create` it"
                    )
            life = Lifetime.of(record.routes, policy)
            try:
                life.check("expires_at", None, record.expires_at, now)
            except InvalidValue as e:
                raise BadImportLine(path, entry.line, "expires_at", e.rule) from None
            route_secret = policy.secrets.get(entry.digest) if policy is not None else None
            if route_secret is not None:  # (it would never be looked up as this token)
                raise BadImportLine(
                    path,
                    entry.line,
                    "token",
                    f"this secret is the route secret {route_secret.id!r} of the policy",
                )
            plan_one(plan, entry, current.get(record.id), stored, path, replace, now)
    counted = [f"{r} ({n} tokens)" for r, n in sorted(unknown.items())]
    if policy is None and counted:
        plan.warnings.append(f"no policy synced yet: routes not checked: {', '.join(counted)}")
    elif counted:
        plan.warnings += [f"route {c} is not in the synced policy" for c in counted]
    return plan


ALLOW_FLAG = "or pass --allow-unknown-route if its policy comes later"


def _checked_routes(
    path: str, entry: Entry, policy: PolicySnapshot | None, allow_unknown: bool
) -> tuple[str, ...]:
    """The entry's routes the policy does not have (allowed); BadImportLine when one is
    refused, or when its LLM fields have no LLM route (tokens.py's rules)."""
    record = entry.record
    try:
        unknown = unknown_routes(record.routes, policy, allow_unknown)
        check_llm_fields(
            record.routes, policy, record.models, record.token_limit, allow_unknown,
            budget=record.budget,
        )  # fmt: skip
    except UnknownRoute as e:
        raise BadImportLine(path, entry.line, "routes", f"{e.why}: {e.fix}, {ALLOW_FLAG}") from None
    except InvalidValue as e:
        field = {"token-limit": "token_limit", "budget": "budget"}.get(e.field, "models")
        raise BadImportLine(path, entry.line, field, e.rule) from None
    return unknown


def plan_one(
    plan: ImportPlan,
    entry: Entry,
    current: str | None,
    stored: dict[str, dict[str, str]],
    path: str,
    replace: bool,
    now: float,
) -> None:
    """Add what one entry needs to `plan` (`current`: the hash its id has in Redis)."""
    digest = entry.digest
    owner = stored.get(digest, {}).get("id")
    if owner is not None and owner != entry.record.id:
        raise BadImportLine(path, entry.line, "token", f"this secret belongs to token {owner!r}")
    before = _parsed(stored.get(digest)) if current == digest else None
    record = entry.record
    if record.created_at is None:  # not in the file: keep the stored one, else now
        created = before.created_at if before is not None else int(now)
        record = dataclasses.replace(record, created_at=created)
    if current is None:
        plan.items.append(ImportItem(digest, record, "create"))
    elif current == digest:
        if before == record:
            plan.unchanged += 1
        else:
            plan.items.append(ImportItem(digest, record, "update"))
    elif replace:
        plan.items.append(ImportItem(digest, record, "replace", old_digest=current))
    else:
        error = TokenExists(record.id)
        raise BadImportLine(
            path, entry.line, "id", f"{error} with another secret (--replace replaces it)"
        )


def _parsed(fields: dict[str, str] | None) -> TokenRecord | None:
    try:
        return TokenRecord.from_fields(fields) if fields else None
    except MalformedRecord:
        return None


def _entry(path: str, number: int, raw: bytes, now: float) -> Entry:
    def bad(field: str, message: str) -> BadImportLine:
        return BadImportLine(path, number, field, message)

    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise bad("", "not UTF-8 text") from None
    except RecursionError:
        raise bad("", "nested too deeply") from None
    except ValueError as e:
        raise bad("", f"not JSON ({e})") from None
    if not isinstance(data, dict):
        raise bad("", "not a JSON object")
    unknown = sorted(set(data) - set(FIELDS) - {"token", "sha256"})
    if unknown:
        raise bad(unknown[0], f"unknown field (known: {', '.join(FIELDS)}, token, sha256)")
    try:
        record = TokenRecord(
            id=check_id(_text(data, "id")),
            routes=check_routes(_names(data, "routes")),
            scopes=(scopes := check_scopes(_names(data, "scopes", required=False))),
            kind=_kind(data, check_kind(scopes)),
            name=_name(data),
            created_at=_time(data, "created_at", 0, None),  # None: kept, or the import's time
            expires_at=_time(data, "expires_at", math.floor(now) + 1, None),
            rate_limit=_rate_limit(data),
            models=None if data.get("models") is None else check_models(_names(data, "models")),
            token_limit=_token_limit(data),
            team=_team(data),
            budget=_budget(data),
            allowed_cidrs=None
            if data.get("allowed_cidrs") is None
            else check_cidrs(_names(data, "allowed_cidrs")),
        )
    except InvalidValue as e:
        field = {
            "route": "routes",
            "scope": "scopes",
            "rate-limit": "rate_limit",
            "model": "models",
            "token-limit": "token_limit",
            "allow-cidr": "allowed_cidrs",
            "allowed_cidr": "allowed_cidrs",
        }.get(e.field)
        raise bad(field or e.field, e.rule) from None
    return Entry(number, _digest(data, bad), record)


def _digest(data: dict[str, Any], bad: Any) -> str:
    if ("token" in data) == ("sha256" in data):
        raise bad("token", "give either token (the secret) or sha256 (its hash), not both")
    if "token" in data:
        token = data["token"]
        if not isinstance(token, str) or not _TOKEN.fullmatch(token):
            raise bad("token", "8 to 4096 characters of A-Z a-z 0-9 - . _ ~ + / (and = at the end)")
        if checksum_fails(token):  # (it would be refused unread: docs/tokens.md#secret-format)
            raise bad("token", "eat_ and 38 base62 characters, but its checksum is wrong")
        return token_hash(token)
    digest = data["sha256"]
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest.lower()):
        raise bad("sha256", "64 hexadecimal digits")
    return digest.lower()


def _text(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise InvalidValue(key, None if value is None else str(value), "must be a string")
    return value


def _names(data: dict[str, Any], key: str, required: bool = True) -> list[str]:
    value = data.get(key, None if required else [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidValue(key.rstrip("s"), None, "must be a list of strings")
    return value


def _rate_limit(data: dict[str, Any]) -> RateLimit | None:
    value = data.get("rate_limit")
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidValue("rate-limit", None, "must be a string such as 600/m, or null")
    return parse_rate_limit(value)


def _token_limit(data: dict[str, Any]) -> TokenLimit | None:
    value = data.get("token_limit")
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidValue("token-limit", None, "must be a string such as 100000/d, or null")
    return parse_token_limit(value)


def _budget(data: dict[str, Any]) -> Budget | None:
    value = data.get("budget")
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidValue("budget", None, "must be a string such as 50/mo, or null")
    return parse_budget(value)


def _kind(data: dict[str, Any], implied: str) -> str:
    """`kind`, where given, must be what the scopes make the token: a record exported as a
    model token is never imported as a management one (nor the other way round)."""
    given = data.get("kind")
    if given is not None and given != implied:
        raise InvalidValue(
            "kind",
            str(given),
            f"its scopes make it a {implied} token: fix the scopes or the kind (a model "
            "token never holds admin or tokens:manage)",
        )
    return implied


def _team(data: dict[str, Any]) -> str | None:
    value = data.get("team")
    if value is None:
        return None
    if not isinstance(value, str) or not TEAM_ID.fullmatch(value):
        raise InvalidValue("team", None, f"must be a team id ({TEAM_ID_RULE}), or null")
    return value


def _name(data: dict[str, Any]) -> str:
    name = data.get("name") or ""
    if not isinstance(name, str):
        raise InvalidValue("name", None, "must be a string")
    check_name(name)
    return name


def _time(data: dict[str, Any], key: str, low: int, default: int | None) -> int | None:
    value = data.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidValue(key, str(value), "must be unix seconds (a whole number) or null")
    if not low <= value <= MAX_UNIX_SECONDS:
        rule = "is in the past" if key == "expires_at" else "must be unix seconds up to 9999"
        raise InvalidValue(key, str(value), rule)
    return value


def _open_regular(path: str) -> BinaryIO:
    """The file for reading, if it is a regular file of at most MAX_FILE_BYTES (a FIFO or a
    device is refused at once instead of hanging)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise BadImportLine(path, None, "", f"cannot read: {e.strerror or e}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_FILE_BYTES:
        os.close(fd)
        raise BadImportLine(path, None, "", f"not a regular file of at most {MAX_FILE_BYTES} bytes")
    return os.fdopen(fd, "rb")
