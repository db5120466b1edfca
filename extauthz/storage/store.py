"""Redis access: the only module that builds Redis keys or runs data commands.

(Connections, URLs and failover are in redis_client; the invalidation listener subscribes.)

Data model (documented in the README, "Redis data model"):

    {prefix}token:<sha256 hex of the token>   HASH  id, routes, scopes, name, created_at,
                                                    expires_at   (key TTL = expires_at)
    {prefix}policy                            HASH  version, snapshot (JSON), digest
    {prefix}servers:<server id>               STRING "1", expiring 3 s after the last heartbeat

Channels: {prefix}invalidate (what changed: a token hash, `policy` or `*`, optionally
followed by a space and a nonce to acknowledge) and {prefix}acks (`<nonce> <server id>`).

Every redis-py error is translated here: connection problems and time-outs become
StoreUnavailable, a key of the wrong type or shape becomes MalformedRecord.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import redis
from redis.exceptions import (
    AskError,
    ClusterDownError,
    NoPermissionError,
    ReadOnlyError,
    RedisClusterException,
    TryAgainError,
)

from extauthz.core.policy import PolicySnapshot
from extauthz.core.token_record import TokenRecord
from extauthz.errors import MalformedRecord, StoreError, StoreRefused, StoreUnavailable
from extauthz.storage.client import connect, follow_primary, key_prefix

DEFAULT_PREFIX = "extauthz:"
LIVE_MS = 3000  # a server's key lives this long after its last heartbeat (one a second)

# Redis cannot answer now (down, timed out, failing over, a Cluster slot moving or
# uncovered): the caller fails closed with a 503, never with a denial that blames the token.
_UNAVAILABLE = (
    redis.ConnectionError,
    redis.TimeoutError,
    ReadOnlyError,  # a Sentinel primary just demoted
    ClusterDownError,
    TryAgainError,
    AskError,  # and MovedError
    RedisClusterException,
    OSError,
)


def open_store(url: str, prefix: str, timeout: float) -> Store:
    """A Store on the Redis named by `url` (standalone, Sentinel or Cluster; see redis_client)."""
    return Store(connect(url, timeout), key_prefix(url, prefix, DEFAULT_PREFIX))


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
        self.acks_channel = f"{prefix}acks"
        self.servers_prefix = f"{prefix}servers:"
        # (command, seconds) after each read the servers make: the Redis latency metric
        self.observe: Callable[[str, float], None] | None = None

    def token_key(self, digest: str) -> str:
        return self._token_prefix + digest

    # --- tokens ---------------------------------------------------------------------------

    def token_record(self, digest: str) -> TokenRecord | None:
        """The record for a token hash, None when there is none.

        The key's remaining TTL is read in the same round trip (HGETALL + PTTL, pipelined):
        the record carries it as `lapses_at`, so that no cache keeps it past that moment.
        """
        key = self._token_prefix + digest
        with self._unavailable(f"token key {digest[:12]}…: "), self._timed("hgetall"):
            pipe = self.client.pipeline(transaction=False)
            pipe.hgetall(key)
            pipe.pttl(key)
            read_at = time.time()
            fields, pttl = pipe.execute()
        if not fields or pttl == -2:  # none, or gone between the two commands
            return None
        record = TokenRecord.from_fields(fields)
        if isinstance(pttl, int) and pttl >= 0:
            record = replace(record, lapses_at=read_at + pttl / 1000)
        return record

    def put_token(self, digest: str, record: TokenRecord) -> None:
        """Write a token record (replacing any) with the key's expiry set to expires_at."""
        key = self.token_key(digest)
        with self._unavailable():
            pipe = self.client.pipeline(transaction=True)
            pipe.delete(key)
            pipe.hset(key, mapping=record.to_fields())
            if record.expires_at is not None:
                pipe.expireat(key, record.expires_at)
            pipe.execute()
            self._publish(digest)

    def replace_token(
        self, old_digest: str, new_digest: str, record: TokenRecord, confirm: float = 0
    ) -> list[str]:
        """Write the record under a new hash and delete the old key, in one transaction.

        Returns the live servers that did not confirm dropping the old hash (see `confirm`).
        """
        new_key = self.token_key(new_digest)
        with self._unavailable():
            pipe = self.client.pipeline(transaction=True)
            pipe.hset(new_key, mapping=record.to_fields())
            if record.expires_at is not None:
                pipe.expireat(new_key, record.expires_at)
            pipe.delete(self.token_key(old_digest))
            pipe.execute()
        return self.confirm(confirm, old_digest, new_digest)

    def delete_tokens(self, digests: list[str], confirm: float = 0) -> tuple[int, list[str]]:
        """Delete token keys; (how many existed, live servers that did not confirm)."""
        with self._unavailable():
            deleted = int(self.client.delete(*(self.token_key(d) for d in digests)))
        return deleted, self.confirm(confirm, *digests)

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
        with self._unavailable(), self._timed("hmget"):
            version, digest = self.client.hmget(self.policy_key, ["version", "digest"])
        if version is None:
            return None
        try:
            return PolicyVersion(int(version), digest or "")
        except ValueError as e:
            raise MalformedRecord(f"{self.policy_key} version is not an integer") from e

    def load_policy(self) -> PolicySnapshot | None:
        """The published policy snapshot, None when none was ever published."""
        with self._unavailable(), self._timed("hget"):
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
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue
        self._publish("policy")

    # --- servers: presence and acknowledgements -----------------------------------------------

    def heartbeat(self, server_id: str) -> None:
        """This server is up and its invalidation channel subscribed (see `confirm`): its key
        lives LIVE_MS more, so Redis alone decides liveness (no clocks compared)."""
        with self._unavailable():
            self.client.set(self.servers_prefix + server_id, "1", px=LIVE_MS)

    def leave(self, server_id: str) -> None:
        with self._unavailable():
            self.client.delete(self.servers_prefix + server_id)

    def acknowledge(self, nonce: str, server_id: str) -> None:
        """Tell the waiting CLI that this server handled the message carrying `nonce`."""
        with self._unavailable():
            self.client.publish(self.acks_channel, f"{nonce} {server_id}")

    def live_servers(self) -> list[str]:
        """The servers whose heartbeat key has not expired."""
        start = len(self.servers_prefix)
        with self._unavailable():
            keys = self.client.scan_iter(match=self.servers_prefix + "*", count=1000)
            return sorted(key[start:] for key in keys)

    def confirm(self, timeout: float, *messages: str) -> list[str]:
        """Publish invalidations and wait up to `timeout` s until every live server says it
        handled them; returns the servers that did not (none when timeout is 0: no wait).

        The acks channel is subscribed before anything is published, so no answer is missed.
        """
        if timeout <= 0:
            self._publish(*messages)
            return []
        waiting = set(self.live_servers())
        if not waiting:
            self._publish(*messages)
            return []
        nonce = secrets.token_hex(8)
        with self._unavailable():
            pubsub = self.client.pubsub()
            try:
                pubsub.subscribe(self.acks_channel)
                deadline = time.monotonic() + timeout
                subscribed = False
                while not subscribed and time.monotonic() < deadline:
                    message = pubsub.get_message(timeout=0.1)
                    subscribed = message is not None and message.get("type") == "subscribe"
                self._publish(*(f"{m} {nonce}" for m in messages))
                while waiting and subscribed and (left := deadline - time.monotonic()) > 0:
                    message = pubsub.get_message(timeout=min(left, 1.0))
                    if message is not None and message.get("type") == "message":
                        got, _, server_id = str(message.get("data", "")).partition(" ")
                        if got == nonce:
                            waiting.discard(server_id)
            finally:
                pubsub.close()
        return sorted(waiting)

    # --- helpers --------------------------------------------------------------------------

    def _publish(self, *messages: str) -> None:
        """Tell every server what changed (after the change: servers that also get keyspace
        notifications see it twice, which is harmless). In a Cluster PUBLISH reaches all nodes.
        """
        with self._unavailable():
            for message in messages:
                self.client.publish(self.invalidate_channel, message)

    def follow_primary(self) -> None:
        """After a failover: the next command goes to the new primary (see redis_client)."""
        with self._unavailable():
            follow_primary(self.client)

    def close(self) -> None:
        self.client.close()

    @contextmanager
    def _timed(self, command: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            if self.observe is not None:
                self.observe(command, time.perf_counter() - started)

    @staticmethod
    @contextmanager
    def _unavailable(context: str = "") -> Iterator[None]:
        """redis-py errors by meaning: cannot answer now → StoreUnavailable; the ACL refused
        → StoreRefused; a key of the wrong type → MalformedRecord; any other error reply →
        StoreError (none of them is ever a reason to allow)."""
        try:
            yield
        except NoPermissionError as e:
            raise StoreRefused(f"Redis refused: {e} (check the ACL of the --redis-url user)") from e
        except _UNAVAILABLE as e:
            raise StoreUnavailable(str(e)) from e
        except redis.ResponseError as e:
            if "WRONGTYPE" in str(e):  # (inside a pipeline the reply is prefixed)
                raise MalformedRecord(f"{context}{e}") from e
            raise StoreError(f"Redis answered an error: {e}") from e
