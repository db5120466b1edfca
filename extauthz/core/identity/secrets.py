"""Secrets looked up by hash, shared by the opaque-token and route-secret kinds: route secrets
from the policy snapshot first, then token records (cache, else Redis)."""

from __future__ import annotations

from extauthz.core.credentials import checksum_fails, token_hash
from extauthz.core.identity.base import (
    Context,
    Identity,
    IdentityResult,
    Rejected,
    Throttled,
    Unavailable,
)
from extauthz.errors import MalformedRecord, StoreError, TooManyFailures


def identify_secret(secret: str, ctx: Context) -> IdentityResult:
    """The identity a secret stands for, by its SHA-256: a route secret of the policy, else
    a token record. A token of the checksummed form whose checksum fails is refused as an
    unknown one is, without a lookup (no Redis command, no cache entry)."""
    digest = token_hash(secret)
    try:
        record = ctx.snapshot.secrets.get(digest)
        if record is None:
            if checksum_fails(secret):
                return Rejected("bad_checksum", "invalid token")
            record = ctx.lookup(digest)
    except MalformedRecord:
        return Rejected("malformed_record", "invalid token")
    except StoreError:  # unavailable, refused, any other error reply: fail closed
        return Unavailable("store_unavailable")
    except TooManyFailures as e:
        return Throttled(e.retry_after)
    if record is None:
        return Rejected("unknown_token", "invalid token")
    if record.management:  # valid at the management API only, never at a model
        return Rejected("management_token", "invalid token", subject=record.id)
    until = record.valid_until()
    if ctx.now >= until:
        return Rejected("expired_token", "token expired", subject=record.id)
    team = None
    if record.team is not None:
        try:
            team = ctx.teams(record.team)
        except MalformedRecord:
            return Rejected("malformed_record", "invalid token", subject=record.id)
        except StoreError:
            return Unavailable("store_unavailable")
    return Identity(
        record.id,
        record.scopes,
        record.routes,
        "granted",
        (),
        until,
        record.name,
        record.rate_limit,
        token_id=record.id,
        models=record.models,
        token_limit=record.token_limit,
        team_id=record.team,
        team=team,
        budget=record.budget,
        allowed_cidrs=record.allowed_cidrs,
    )
