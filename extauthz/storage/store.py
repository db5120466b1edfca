"""Redis access: the keys and data commands of the decision path, the policy and the servers.

(Connections, URLs and failover are in redis_client; the invalidation listener subscribes.)

Data model (documented in docs/redis.md):

    {prefix}token:<sha256 hex of the token>   HASH  id, routes, scopes, name, created_at,
                                                    expires_at   (key TTL = expires_at)
    {prefix}team:<team id>                    HASH  id, name, models, rate_limit, token_limit,
                                                    created_at
    {prefix}policy                            HASH  version, snapshot (JSON), digest
    {prefix}servers:<server id>               STRING "1", expiring 3 s after the last heartbeat
    {prefix}rl:<counter>:<unit><window>       STRING permits taken in one rate-limit window
    {prefix}usage:<YYYY-MM-DD>                HASH  a:<token id>, r:<token id>: allowed and
                                                    rate-limited requests that UTC day
    {prefix}usage:<YYYY-MM-DD>:models:<id>    HASH  model → allowed LLM requests that day
    {prefix}usage:<YYYY-MM-DD>:tokens:<id>    HASH  <kind>:<model> → LLM tokens that day
    {prefix}usage:last-used                   ZSET  token id → unix seconds of its last use
    {prefix}usage:batch:<id>                  STRING a usage flush batch was written (2 days)
    {prefix}audit                             STREAM changes: time, actor, action, target,
                                                    detail (capped, ~100 000 events)
    {prefix}servers                           SET   server ids (the CLI drops those whose key
                                                    expired: it finds live servers without SCAN)

The token id index (`token-id:<id>`, `token-ids`, `token-seq`) is in token_index.py.

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
from extauthz.core.team_record import TeamRecord
from extauthz.core.token_record import MAX_UNIX_SECONDS, TokenRecord
from extauthz.errors import MalformedRecord, StoreError, StoreRefused, StoreUnavailable
from extauthz.storage.client import LazyCluster, connect, follow_primary, key_prefix

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


def utc_date(day: int) -> str:
    """`YYYY-MM-DD` of a UTC day given as days since the epoch (usage keys and reports)."""
    return time.strftime("%Y-%m-%d", time.gmtime(day * 86400))


# LLM tokens per token, day and model (ext_proc); cached prompt tokens are part of the
# prompt tokens, reasoning tokens part of the completion tokens
TOKEN_KINDS = (
    "prompt_tokens",
    "completion_tokens",
    "estimated_completion_tokens",
    "cached_prompt_tokens",
    "reasoning_tokens",
    "cost_microusd",  # what they cost, in micro-dollars (models with a price)
)


def unix_seconds(score: float | None) -> int | None:
    """A time written by the usage meter (or by hand): None unless unix seconds up to the
    year 9999 (`+inf`, NaN, 10^14 are shown as unknown, never crash a reader)."""
    if score is None or not 0 <= score <= MAX_UNIX_SECONDS:  # (NaN fails both)
        return None
    return int(score)


def _count(raw: str | None) -> int:
    """A usage counter as Redis holds it; one edited by hand into a non-integer counts 0."""
    try:
        return max(int(raw or 0), 0)
    except ValueError:
        return 0


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
        self._team_prefix = f"{prefix}team:"
        self.policy_key = f"{prefix}policy"
        # servers listen here too: a token hash, "policy", or "*" (drop every cached token)
        self.invalidate_channel = f"{prefix}invalidate"
        self.acks_channel = f"{prefix}acks"
        self.servers_prefix = f"{prefix}servers:"
        self.servers_key = f"{prefix}servers"
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
        with self.redis_errors(f"token key {digest[:12]}…: "), self._timed("hgetall"):
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

    def team_key(self, team_id: str) -> str:
        return self._team_prefix + team_id

    def team_tokens_key(self, team_id: str) -> str:
        """The set of the ids of a team's tokens (storage/team_index.py)."""
        return f"{self.prefix}team-tokens:{team_id}"

    def team_record(self, team_id: str) -> TeamRecord | None:
        """The record of a team, None when there is none (HGETALL)."""
        with self.redis_errors(f"team key {team_id}: "), self._timed("hgetall"):
            fields = self.client.hgetall(self._team_prefix + team_id)
        return TeamRecord.from_fields(team_id, fields) if fields else None

    # --- limits (runtime/limiter.py) -----------------------------------------------------

    def take_units(
        self, counter: str, want: int, limit: int, ends: float, expire: bool = True
    ) -> tuple[int, int]:
        """Lease up to `want` units from a limit's counter (`{prefix}<counter>`, expiring a
        minute after `ends`; `expire` False: this caller set that already) without leaving
        it past `limit`: (units granted, the counter's total after). One round trip; two when
        it would pass the limit (what was over is given back at once)."""
        key = f"{self.prefix}{counter}"
        with self.redis_errors(), self._timed("incrby"):
            if expire:
                pipe = self.client.pipeline(transaction=False)
                pipe.incrby(key, want)
                pipe.expireat(key, int(ends) + 60)
                total = int(pipe.execute()[0])
            else:
                total = int(self.client.incrby(key, want))
            over = min(want, total - max(limit, total - want))
            if over > 0:
                total = int(self.client.decrby(key, over))
        return want - max(over, 0), total

    def ticket_secret(self, candidate: str) -> str:
        """The key that signs LLM tickets (runtime/tickets.py), `{prefix}tickets:key`:
        `candidate` becomes it if there is none yet (SET NX), then it is read (GET)."""
        key = f"{self.prefix}tickets:key"
        with self.redis_errors():
            pipe = self.client.pipeline(transaction=False)
            pipe.set(key, candidate, nx=True)
            pipe.get(key)
            _, found = pipe.execute()
        if not isinstance(found, str) or len(found) < 32:
            raise MalformedRecord(f"{key} is not a key of at least 32 characters")
        return found

    def claim_tickets(self, hour: int, nonces: list[str], until: int | None) -> list[bool]:
        """Claim LLM records' nonces issued in `hour` (the set `{prefix}tickets:counted:<hour>`,
        expiring at `until`; None: its expiry was set already), in one MULTI/EXEC: for each,
        True the first time, False ever after (runtime/tickets.py)."""
        key = f"{self.prefix}tickets:counted:{hour}"
        with self.redis_errors():
            pipe = self.client.pipeline(transaction=True)
            pipe.smismember(key, nonces)
            pipe.sadd(key, *nonces)
            if until is not None:
                pipe.expireat(key, until)
            seen = pipe.execute()[0]
        return [not s for s in seen]

    def add_units(self, counter: str, units: int, ends: float) -> None:
        """Add `units` (a debt; negative: a budget given back) to a limit's counter."""
        key = f"{self.prefix}{counter}"
        with self.redis_errors(), self._timed("incrby"):
            pipe = self.client.pipeline(transaction=False)
            pipe.incrby(key, units)
            pipe.expireat(key, int(ends) + 60)
            pipe.execute()

    # --- audit ----------------------------------------------------------------------------

    def append_audit(self, event: dict[str, str], max_events: int) -> None:
        """XADD to `{prefix}audit`, trimmed to about `max_events`."""
        with self.redis_errors():
            self.client.xadd(f"{self.prefix}audit", event, maxlen=max_events, approximate=True)

    def read_audit(self, limit: int) -> list[tuple[str, dict[str, str]]]:
        """The newest `limit` events, newest first."""
        with self.redis_errors():
            return list(self.client.xrevrange(f"{self.prefix}audit", count=limit))

    # --- usage ----------------------------------------------------------------------------

    def usage_key(self, day: int) -> str:
        """The hash of one UTC day (days since the epoch): fields a:<id>, r:<id>."""
        return f"{self.prefix}usage:{utc_date(day)}"

    def model_usage_key(self, day: int, token_id: str) -> str:
        """One token's allowed LLM requests per model on one UTC day: field model → count."""
        return f"{self.prefix}usage:{utc_date(day)}:models:{token_id}"

    def token_usage_key(self, day: int, token_id: str) -> str:
        """One token's LLM tokens on one UTC day: fields `<kind>:<model>` → count (kind: one
        of TOKEN_KINDS)."""
        return f"{self.prefix}usage:{utc_date(day)}:tokens:{token_id}"

    def llm_token_usage(self, token_id: str, days: list[int]) -> list[dict[str, dict[str, int]]]:
        """{model: {kind: tokens}} of one token for each day asked."""
        rows = self._hashes([self.token_usage_key(day, token_id) for day in days])
        out: list[dict[str, dict[str, int]]] = []
        for row in rows:
            per_model: dict[str, dict[str, int]] = {}
            for field, value in row.items():
                kind, _, model = field.partition(":")
                if kind in TOKEN_KINDS and model:
                    per_model.setdefault(model, {})[kind] = _count(value)
            out.append(per_model)
        return out

    def model_usage(self, token_id: str, days: list[int]) -> list[dict[str, int]]:
        """{model: allowed} of one token for each day asked."""
        rows = self._hashes([self.model_usage_key(day, token_id) for day in days])
        return [{m: _count(n) for m, n in row.items()} for row in rows]

    def _hashes(self, keys: list[str]) -> list[dict[str, str]]:
        """HGETALL of each key, in one round trip."""
        with self.redis_errors():
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.hgetall(key)
            rows: list[dict[str, str]] = pipe.execute()
        return rows

    @property
    def last_used_key(self) -> str:
        return f"{self.prefix}usage:last-used"

    def add_usage(
        self,
        batch_id: str,
        counts: dict[tuple[str, int], list[int]],
        retention_days: int,
        retry: bool = False,
        models: dict[tuple[str, int, str], int] | None = None,
        tokens: dict[tuple[str, int, str], list[int]] | None = None,
    ) -> int:
        """Add per-token, per-day counts ([allowed, rate limited]) exactly once: the HINCRBYs
        and a marker `{prefix}usage:batch:<batch_id>` are one MULTI/EXEC, so a batch whose
        reply was lost (`retry`: sent before) is found written and not added again. Day
        hashes expire `retention_days` after their day. Returns how many commands Redis
        refused (a day hash of another type, edited by hand): dropped, never retried."""
        marker = f"{self.prefix}usage:batch:{batch_id}"
        with self.redis_errors():
            if retry and self.client.exists(marker):
                return 0
            pipe = self.client.pipeline(transaction=True)
            for (token_id, day), (allowed, limited) in counts.items():
                key = self.usage_key(day)
                if allowed:
                    pipe.hincrby(key, f"a:{token_id}", allowed)
                if limited:
                    pipe.hincrby(key, f"r:{token_id}", limited)
            for day in {day for _, day in counts}:
                pipe.expireat(self.usage_key(day), (day + 1 + retention_days) * 86400)
            for (token_id, day, model), allowed in (models or {}).items():
                key = self.model_usage_key(day, token_id)
                pipe.hincrby(key, model, allowed)
                pipe.expireat(key, (day + 1 + retention_days) * 86400)
            for (token_id, day, model), charged in (tokens or {}).items():
                key = self.token_usage_key(day, token_id)
                for kind, n in zip(TOKEN_KINDS, charged, strict=True):
                    if n:
                        pipe.hincrby(key, f"{kind}:{model}", n)
                pipe.expireat(key, (day + 1 + retention_days) * 86400)
            pipe.set(marker, "1", ex=2 * 86400)
            replies = pipe.execute(raise_on_error=False)
        return sum(1 for reply in replies if isinstance(reply, Exception))

    def raise_last_used(self, last_used: dict[str, float]) -> None:
        """Raise tokens' last-used times (ZADD GT: never back in time; safe to repeat)."""
        with self.redis_errors():
            self.client.zadd(self.last_used_key, {i: int(t) for i, t in last_used.items()}, gt=True)

    def usage(self, token_id: str, days: list[int]) -> list[tuple[int, int, int]]:
        """(day, allowed, rate limited) of one token for each day asked."""
        with self.redis_errors():
            pipe = self.client.pipeline(transaction=False)
            for day in days:
                pipe.hmget(self.usage_key(day), [f"a:{token_id}", f"r:{token_id}"])
            rows = pipe.execute()
        return [(d, _count(a), _count(r)) for d, (a, r) in zip(days, rows, strict=True)]

    def last_used(self, ids: list[str]) -> list[int | None]:
        """When each token was last used (unix seconds; None: never, or not yet flushed)."""
        if not ids:
            return []
        with self.redis_errors():
            scores = self.client.zmscore(self.last_used_key, ids)
        return [unix_seconds(s) for s in scores]

    # --- policy ---------------------------------------------------------------------------

    def policy_version(self) -> PolicyVersion | None:
        """The published policy's version and digest, None when none was ever published."""
        with self.redis_errors(), self._timed("hmget"):
            version, digest = self.client.hmget(self.policy_key, ["version", "digest"])
        if version is None:
            return None
        try:
            return PolicyVersion(int(version), digest or "")
        except ValueError as e:
            raise MalformedRecord(f"{self.policy_key} version is not an integer") from e

    def load_policy(self) -> PolicySnapshot | None:
        """The published policy snapshot, None when none was ever published."""
        with self.redis_errors(), self._timed("hget"):
            text = self.client.hget(self.policy_key, "snapshot")
        return self._parse_snapshot(text)

    def _parse_snapshot(self, text: str | None) -> PolicySnapshot | None:
        if text is None:
            return None
        try:
            return PolicySnapshot.from_json(text)
        except (ValueError, KeyError, TypeError, MalformedRecord) as e:
            raise MalformedRecord(f"{self.policy_key} snapshot is malformed: {e}") from e

    def update_policy(
        self,
        plan: Callable[[PolicySnapshot | None], PolicySnapshot | None],
        replace_malformed: bool = False,
    ) -> None:
        """Optimistic transaction: `plan(current)` gives the snapshot to publish, or None.

        The new snapshot replaces the old in one HSET inside MULTI, under WATCH: if another
        writer publishes meanwhile, `plan` runs again on top of that version. A published
        snapshot that cannot be read raises MalformedRecord, or with `replace_malformed` is
        planned over as if there were none.
        """
        with self.redis_errors(), self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(self.policy_key)
                    text = pipe.hget(self.policy_key, "snapshot")
                    try:
                        current = self._parse_snapshot(text)
                    except MalformedRecord:
                        if not replace_malformed:
                            raise
                        current = None
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
        self.publish("policy")

    # --- servers: presence and acknowledgements -----------------------------------------------

    def heartbeat(self, server_id: str) -> None:
        """This server is up and its invalidation channel subscribed (see `confirm`): its key
        lives LIVE_MS more, so Redis alone decides liveness (no clocks compared)."""
        with self.redis_errors():
            # one command a beat; the set is joined when the key was new (first beat, after
            # an expiry or a failover that lost it)
            if self.client.set(self.servers_prefix + server_id, "1", px=LIVE_MS, get=True) is None:
                self.client.sadd(self.servers_key, server_id)

    def leave(self, server_id: str) -> None:
        with self.redis_errors():
            pipe = self.client.pipeline(transaction=False)
            pipe.delete(self.servers_prefix + server_id)
            pipe.srem(self.servers_key, server_id)
            pipe.execute()

    def acknowledge(self, nonce: str, server_id: str) -> None:
        """Tell the waiting CLI that this server handled the message carrying `nonce`."""
        with self.redis_errors():
            self.client.publish(self.acks_channel, f"{nonce} {server_id}")

    def live_servers(self) -> list[str]:
        """The servers whose heartbeat key has not expired (the others leave the set)."""
        with self.redis_errors():
            members = sorted(self.client.smembers(self.servers_key))
            pipe = self.client.pipeline(transaction=False)
            for server_id in members:
                pipe.exists(self.servers_prefix + server_id)
            alive = pipe.execute() if members else []
        gone = [m for m, up in zip(members, alive, strict=True) if not up]
        if gone:
            try:
                with self.redis_errors():
                    self.client.srem(self.servers_key, *gone)
            except StoreRefused:
                pass  # a user that may only read: the next writer tidies up
        return [m for m, up in zip(members, alive, strict=True) if up]

    def confirm(self, timeout: float, *messages: str) -> list[str]:
        """Publish invalidations and wait up to `timeout` s until every live server says it
        handled them; returns the servers that did not (none when timeout is 0: no wait).

        The acks channel is subscribed before anything is published, so no answer is missed.
        """
        if timeout <= 0:
            self.publish(*messages)
            return []
        waiting = set(self.live_servers())
        if not waiting:
            self.publish(*messages)
            return []
        nonce = secrets.token_hex(8)
        with self.redis_errors():
            pubsub = self.client.pubsub()
            try:
                pubsub.subscribe(self.acks_channel)
                deadline = time.monotonic() + timeout
                subscribed = False
                while not subscribed and time.monotonic() < deadline:
                    message = pubsub.get_message(timeout=0.1)
                    subscribed = message is not None and message.get("type") == "subscribe"
                self.publish(*(f"{m} {nonce}" for m in messages))
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

    def publish(self, *messages: str) -> None:
        """Tell every server what changed (after the change: servers that also get keyspace
        notifications see it twice, which is harmless). In a Cluster PUBLISH reaches all nodes.
        """
        with self.redis_errors():
            for message in messages:
                self.client.publish(self.invalidate_channel, message)

    def replicated(self, timeout: float) -> str | None:
        """Wait until a replica holds every write made before this call (a revoke must not
        be undone by a failover). None when one does; else a warning saying why not.

        WAIT counts the replicas that acknowledged the calling connection's writes, so a
        marker is written and waited for on one connection (one pipeline); replication is
        ordered, so the writes before it are there too."""
        if isinstance(self.client, LazyCluster):
            return "a Redis Cluster: not checked that a replica has it"
        try:
            with self.redis_errors():
                info = self.client.info("replication")
                # no replica now nor within repl-backlog-ttl (an hour): no WAIT for none;
                # one that is reconnecting (the backlog is kept for it) is waited for
                if not info.get("connected_slaves") and not info.get("repl_backlog_active"):
                    return "Redis has no replica: a failover to a new primary would not have it"
                pipe = self.client.pipeline(transaction=False)
                pipe.set(f"{self.prefix}replicated", "1", px=60_000)
                pipe.execute_command("WAIT", 1, max(1, int(timeout * 1000)))
                _, acked = pipe.execute()
        except StoreError as e:
            return f"not checked that a replica has it: {e}"
        if int(acked) >= 1:
            return None
        return f"no replica confirmed it within {timeout:g}s: a failover now could undo it"

    def follow_primary(self) -> None:
        """After a failover: the next command goes to the new primary (see redis_client)."""
        with self.redis_errors():
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
    def redis_errors(context: str = "") -> Iterator[None]:
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
