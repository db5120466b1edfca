"""Redis access: the only module that builds Redis keys or calls Redis.

Data model (documented in the README, "Redis data model"):

    {prefix}token:<sha256 hex of the token>   HASH  id, routes, scopes, name, created_at,
                                                    expires_at   (key TTL = expires_at)
    {prefix}policy                            HASH  version, snapshot (JSON), digest

Every redis-py error is translated here: connection problems and time-outs become
StoreUnavailable, a key of the wrong type or shape becomes MalformedRecord.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.exceptions import NoPermissionError
from redis.retry import Retry

from extauthz.credentials import TokenRecord
from extauthz.errors import MalformedRecord, StoreError, StoreUnavailable
from extauthz.policy import PolicySnapshot

DEFAULT_PREFIX = "extauthz:"

_UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, OSError)


def redact_url(url: str) -> str:
    """The Redis URL with any password replaced by `***`, fit for messages and logs."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def connect(url: str, timeout: float) -> redis.Redis:
    """A client for `url` whose every command fails within about `timeout` seconds.

    No retries: on the decision path a failed command must turn into a fast 503, well inside
    Envoy's ext_authz timeout, rather than a retry that outlives it.
    """
    try:
        return redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            max_connections=64,
        )
    except ValueError as e:
        raise StoreUnavailable(f"invalid Redis URL {redact_url(url)}: {e}") from e


@dataclass(frozen=True, slots=True)
class PolicyVersion:
    version: int
    digest: str


class Store:
    """Token records and the policy snapshot in Redis, under one key prefix."""

    def __init__(self, client: redis.Redis, prefix: str = DEFAULT_PREFIX) -> None:
        # Any: redis-py's annotations type every reply as bytes | str, even with
        # decode_responses=True (which `connect` always sets).
        self.client: Any = client
        self.prefix = prefix
        self._token_prefix = f"{prefix}token:"
        self.policy_key = f"{prefix}policy"
        # servers listen here too: a token hash, "policy", or "*" (drop every cached token)
        self.invalidate_channel = f"{prefix}invalidate"

    def token_key(self, digest: str) -> str:
        return self._token_prefix + digest

    # --- tokens ---------------------------------------------------------------------------

    def token_record(self, digest: str) -> TokenRecord | None:
        """The record for a token hash, None when there is none."""
        try:
            fields = self.client.hgetall(self._token_prefix + digest)
        except NoPermissionError as e:
            raise StoreUnavailable(f"Redis refused HGETALL: {e}") from e
        except redis.ResponseError as e:
            raise MalformedRecord(f"token key {digest[:12]}…: {e}") from e
        except _UNAVAILABLE as e:
            raise StoreUnavailable(str(e)) from e
        if not fields:
            return None
        return TokenRecord.from_fields(fields)

    def put_token(self, digest: str, record: TokenRecord) -> None:
        """Write a token record (replacing any) with the key's expiry set to expires_at."""
        key = self.token_key(digest)
        with self._unavailable():
            pipe = self.client.pipeline(transaction=True)
            pipe.delete(key)
            pipe.hset(key, mapping=record.to_fields())
            if record.expires_at is not None:
                pipe.expireat(key, record.expires_at)
            pipe.publish(self.invalidate_channel, digest)
            pipe.execute()

    def replace_token(self, old_digest: str, new_digest: str, record: TokenRecord) -> None:
        """Write the record under a new hash and delete the old key, in one transaction."""
        new_key = self.token_key(new_digest)
        with self._unavailable():
            pipe = self.client.pipeline(transaction=True)
            pipe.hset(new_key, mapping=record.to_fields())
            if record.expires_at is not None:
                pipe.expireat(new_key, record.expires_at)
            pipe.delete(self.token_key(old_digest))
            pipe.publish(self.invalidate_channel, old_digest)
            pipe.publish(self.invalidate_channel, new_digest)
            pipe.execute()

    def delete_token(self, digest: str) -> bool:
        with self._unavailable():
            pipe = self.client.pipeline(transaction=True)
            pipe.delete(self.token_key(digest))
            pipe.publish(self.invalidate_channel, digest)
            deleted, _ = pipe.execute()
            return bool(deleted)

    def iter_tokens(self) -> Iterator[tuple[str, TokenRecord | MalformedRecord]]:
        """Every token key as (hash, record), or (hash, the error) for a malformed one."""
        with self._unavailable():
            keys = sorted(self.client.scan_iter(match=self._token_prefix + "*", count=1000))
            for start in range(0, len(keys), 500):
                batch = keys[start : start + 500]
                pipe = self.client.pipeline(transaction=False)
                for key in batch:
                    pipe.hgetall(key)
                results = pipe.execute(raise_on_error=False)
                for key, fields in zip(batch, results, strict=True):
                    digest = key[len(self._token_prefix) :]
                    if isinstance(fields, Exception):
                        yield digest, MalformedRecord(f"token key {digest[:12]}…: {fields}")
                    elif fields:  # deleted or expired since the scan
                        try:
                            yield digest, TokenRecord.from_fields(fields)
                        except MalformedRecord as e:
                            yield digest, e

    def find_tokens(self, token_id: str) -> list[tuple[str, TokenRecord]]:
        """All (hash, record) pairs whose record has this id."""
        return [
            (digest, rec)
            for digest, rec in self.iter_tokens()
            if isinstance(rec, TokenRecord) and rec.id == token_id
        ]

    # --- policy ---------------------------------------------------------------------------

    def policy_version(self) -> PolicyVersion | None:
        """The published policy's version and digest, None when none was ever published."""
        with self._unavailable():
            version, digest = self.client.hmget(self.policy_key, ["version", "digest"])
        if version is None:
            return None
        try:
            return PolicyVersion(int(version), digest or "")
        except ValueError as e:
            raise MalformedRecord(f"{self.policy_key} version is not an integer") from e

    def load_policy(self) -> PolicySnapshot | None:
        """The published policy snapshot, None when none was ever published."""
        with self._unavailable():
            text = self.client.hget(self.policy_key, "snapshot")
        return self._parse_snapshot(text)

    def _parse_snapshot(self, text: str | None) -> PolicySnapshot | None:
        if text is None:
            return None
        try:
            return PolicySnapshot.from_json(text)
        except (ValueError, KeyError, TypeError, MalformedRecord) as e:
            raise MalformedRecord(f"{self.policy_key} snapshot is malformed: {e}") from e

    def update_policy(self, plan: Callable[[PolicySnapshot | None], PolicySnapshot | None]) -> None:
        """Optimistic transaction: `plan(current)` gives the snapshot to publish, or None.

        The new snapshot replaces the old in one HSET inside MULTI, under WATCH: if another
        writer publishes meanwhile, `plan` runs again on top of that version.
        """
        with self._unavailable(), self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(self.policy_key)
                    current = self._parse_snapshot(pipe.hget(self.policy_key, "snapshot"))
                    snapshot = plan(current)
                    if snapshot is None:
                        return
                    pipe.multi()
                    pipe.hset(
                        self.policy_key,
                        mapping={
                            "version": str(snapshot.version),
                            "digest": snapshot.digest(),
                            "snapshot": snapshot.to_json(),
                        },
                    )
                    pipe.publish(self.invalidate_channel, "policy")
                    pipe.execute()
                    return
                except redis.WatchError:
                    continue

    # --- helpers --------------------------------------------------------------------------

    def close(self) -> None:
        self.client.close()

    @staticmethod
    @contextmanager
    def _unavailable() -> Iterator[None]:
        """redis-py errors: connection problems → StoreUnavailable, others → MalformedRecord."""
        try:
            yield
        except _UNAVAILABLE as e:
            raise StoreUnavailable(str(e)) from e
        except NoPermissionError as e:
            raise StoreError(f"Redis refused: {e} (check the ACL of the --redis-url user)") from e
        except redis.ResponseError as e:
            raise MalformedRecord(str(e)) from e
