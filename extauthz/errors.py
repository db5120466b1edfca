"""One error hierarchy for the whole package.

Library errors (redis, yaml, grpc) are translated into these at the module boundary,
so callers catch by meaning: configuration, policy, store or usage.
"""

from __future__ import annotations


class ExtAuthzError(Exception):
    """Root of every error extauthz raises on purpose."""


class ConfigError(ExtAuthzError):
    """A setting is missing or invalid (command line, environment or config file)."""


class UsageError(ExtAuthzError):
    """The user asked for something that cannot be done as asked."""


def shown(text: str, limit: int = 80) -> str:
    """A user's value quoted for a message: cut, with control characters and undecodable
    bytes escaped (a message never carries raw terminal escapes or forged lines)."""
    cut = text if len(text) <= limit else text[:limit] + "…"
    return repr(cut) if cut.isprintable() else ascii(cut)


class InvalidValue(UsageError):
    """A value for `field` breaks `rule` (value None: none was given). Callers word it for
    their surface (CLI flag, API field); the default text names the field plainly."""

    def __init__(self, field: str, value: str | None, rule: str) -> None:
        self.field = field
        self.value = value
        self.rule = rule
        given = f"missing {field}" if value is None else f"invalid {field} {shown(value)}"
        super().__init__(f"{given}: {rule}")


class UnknownRoute(InvalidValue):
    """A token for a route the synced policy does not have (a typo, or a policy still to
    come). `why` and `fix` say so; each surface adds how to allow it anyway (its rule: the
    API's words)."""

    def __init__(self, route: str, why: str, fix: str) -> None:
        self.why = why
        self.fix = fix
        allow = 'send "allow_unknown_route": true if its policy comes later'
        super().__init__("route", route, f"{why}: {fix}, or {allow}")


class UnknownToken(UsageError):
    """No token with this id is in the id index (one made by hand may exist: reindex)."""

    def __init__(self, token_id: str) -> None:
        self.token_id = token_id
        super().__init__(f"no token with id {shown(token_id)}")


class TokenExists(UsageError):
    """Another secret already has this id (create --id, import without replace)."""

    def __init__(self, token_id: str) -> None:
        self.token_id = token_id
        super().__init__(f"a token with id {shown(token_id)} already exists")


class UnknownTeam(UsageError):
    """No team with this id."""

    def __init__(self, team_id: str) -> None:
        self.team_id = team_id
        super().__init__(f"no team with id {shown(team_id)}")


class TeamExists(UsageError):
    """A team with this id exists already (team create)."""

    def __init__(self, team_id: str) -> None:
        self.team_id = team_id
        super().__init__(f"a team with id {shown(team_id)} already exists")


class TeamHasTokens(UsageError):
    """A team still has tokens (team delete without revoking them)."""

    def __init__(self, team_id: str, count: int) -> None:
        self.team_id = team_id
        self.count = count
        super().__init__(
            f"team {shown(team_id)} still has {count} token{'s' if count != 1 else ''}: "
            "revoke them, move them (`token update ID --team ...`) or pass --revoke-tokens"
        )


class BadImportLine(UsageError):
    """A line of a token import file is invalid; carries the file, line and field."""

    def __init__(self, file: str, line: int | None, field: str, message: str) -> None:
        self.file = file
        self.line = line
        self.field = field
        self.message = message
        where = file if line is None else f"{file}:{line}"
        super().__init__(f"{where}: {field + ': ' if field else ''}{message}")


class PolicyError(ExtAuthzError):
    """A policy file is invalid; carries the file, line and key at fault."""

    def __init__(self, file: str, line: int | None, key: str, message: str) -> None:
        self.file = file
        self.line = line
        self.key = key
        self.message = message
        where = f"{file}:{line}" if line is not None else file
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")


class StoreError(ExtAuthzError):
    """Something is wrong with the store (Redis)."""


class StoreUnavailable(StoreError):
    """Redis cannot be reached or did not answer in time: decisions needing it fail closed."""


class StoreRefused(StoreError):
    """Redis refused a command (the ACL of the --redis-url user): decisions fail closed."""


class MalformedRecord(StoreError):
    """A record in Redis does not have the documented shape (→ 401 for that token)."""


class TooManyFailures(ExtAuthzError):
    """This client failed to authenticate too often: no Redis lookup for it now (→ 429)."""

    def __init__(self, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(f"too many failed authentications; retry in {retry_after:.1f}s")


class JwksError(ExtAuthzError):
    """A JWKS or discovery document could not be fetched or has no usable key."""


class BadSignature(ExtAuthzError):
    """A secret scanning report whose signature does not verify against the keys in
    --secret-scanning-keys (→ 401; nothing in it is read)."""


class BadLeakReport(UsageError):
    """A signed secret scanning report that is not the documented shape (→ 400)."""


class StackError(ExtAuthzError):
    """A part of the local stack could not be found or started."""
