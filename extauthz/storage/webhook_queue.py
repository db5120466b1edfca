"""The webhook queue in Redis: events waiting to be delivered, shared by every process that
sends them (runtime/webhooks.py; docs/webhooks.md, docs/redis.md).

    {prefix}webhooks:seen:<webhook id>   STRING  "1": the event was queued once (SET NX under
                                                 WATCH, with the event); kept until the event
                                                 can no longer happen again (EXAT)
    {prefix}webhooks:event:<webhook id>  HASH    type, body (the JSON sent), created (unix
                                                 seconds), first (of the first attempt),
                                                 failures; deleted once delivered or dropped
    {prefix}webhooks:due                 ZSET    webhook id → unix seconds of its next attempt
    {prefix}webhooks:claim:<webhook id>  STRING  the sender attempting it (SET NX PX): no other
                                                 sends it meanwhile; it expires, so a sender
                                                 killed mid-attempt leaves it to another
    {prefix}webhooks:scan                STRING  the process looking for expiring tokens now
                                                 (SET NX EX): one at a time

Every redis-py error becomes a StoreError (Store.redis_errors). With a Cluster the prefix's
hash tag puts every key in one slot, so the transactions span them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from extauthz.storage.store import Store

MAX_WATCH_RETRIES = 10


@dataclass(frozen=True, slots=True)
class QueuedEvent:
    """One event to queue: its webhook id, type, body, when it happened, and until when its
    id must not be queued again (unix seconds)."""

    webhook_id: str
    kind: str
    body: bytes
    created: float
    keep_until: int


@dataclass(frozen=True, slots=True)
class DueEvent:
    """An event read back for an attempt."""

    webhook_id: str
    kind: str
    body: bytes
    created: float
    first: float | None  # unix seconds of its first attempt (None: never tried)
    failures: int


class WebhookQueue:
    """The queue's keys and commands (see the module docstring)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.client: Any = store.client
        base = f"{store.prefix}webhooks:"
        self._seen = base + "seen:"
        self._event = base + "event:"
        self._claim = base + "claim:"
        self.due_key = base + "due"
        self.scan_key = base + "scan"

    def seen_key(self, webhook_id: str) -> str:
        return self._seen + webhook_id

    def event_key(self, webhook_id: str) -> str:
        return self._event + webhook_id

    def claim_key(self, webhook_id: str) -> str:
        return self._claim + webhook_id

    def enqueue(self, events: Sequence[QueuedEvent]) -> list[bool]:
        """Queue the events never queued before (due at once), in one transaction under
        WATCH of their `seen` keys: for each, whether it was queued now (False: some process
        had queued it, delivered or not)."""
        if not events:
            return []
        seen = [self.seen_key(e.webhook_id) for e in events]
        with self.store.redis_errors(), self.client.pipeline(transaction=True) as pipe:
            for _ in range(MAX_WATCH_RETRIES):
                try:
                    pipe.watch(*seen)
                    known = pipe.mget(seen)
                    new = [not isinstance(k, str) for k in known]
                    pipe.multi()
                    for event, key, fresh in zip(events, seen, new, strict=True):
                        if fresh:
                            pipe.set(key, "1", exat=event.keep_until)
                            pipe.hset(
                                self.event_key(event.webhook_id),
                                mapping={
                                    "type": event.kind,
                                    "body": event.body.decode(),
                                    "created": repr(event.created),
                                    "failures": "0",
                                },
                            )
                            pipe.zadd(self.due_key, {event.webhook_id: event.created})
                    if any(new):
                        pipe.execute()
                    else:
                        pipe.reset()
                    return new
                except redis.WatchError:
                    continue
        raise redis.WatchError("webhook queue: the seen keys kept changing")  # pragma: no cover

    def due(self, now: float, count: int) -> list[str]:
        """Up to `count` webhook ids whose attempt is due at `now`, oldest first."""
        with self.store.redis_errors():
            return list(self.client.zrangebyscore(self.due_key, "-inf", now, start=0, num=count))

    def claim(self, webhook_id: str, sender: str, ms: int) -> DueEvent | None:
        """Claim the event for `ms` milliseconds (SET NX PX) and read it; None when another
        sender holds it, or it is gone (delivered meanwhile: its id leaves the due set)."""
        with self.store.redis_errors():
            if not self.client.set(self.claim_key(webhook_id), sender, nx=True, px=ms):
                return None
            fields = self.client.hgetall(self.event_key(webhook_id))
            if not fields or "body" not in fields:
                pipe = self.client.pipeline(transaction=True)
                pipe.zrem(self.due_key, webhook_id)
                pipe.delete(self.claim_key(webhook_id), self.event_key(webhook_id))
                pipe.execute()
                return None
        return DueEvent(
            webhook_id,
            fields.get("type", ""),
            fields["body"].encode(),
            _number(fields.get("created")) or 0.0,
            _number(fields.get("first")),
            int(_number(fields.get("failures")) or 0),
        )

    def first_attempt(self, webhook_id: str, now: float) -> float:
        """Record `now` as the event's first attempt unless one is recorded (HSETNX)."""
        with self.store.redis_errors():
            self.client.hsetnx(self.event_key(webhook_id), "first", repr(now))
        return now

    def done(self, webhook_id: str) -> None:
        """Delivered, or dropped: the event, its place in the queue and its claim go."""
        with self.store.redis_errors():
            pipe = self.client.pipeline(transaction=True)
            pipe.zrem(self.due_key, webhook_id)
            pipe.delete(self.event_key(webhook_id), self.claim_key(webhook_id))
            pipe.execute()

    def retry(self, webhook_id: str, failures: int, at: float) -> None:
        """A failed attempt: due again at `at`, its claim released."""
        with self.store.redis_errors():
            pipe = self.client.pipeline(transaction=True)
            pipe.hset(self.event_key(webhook_id), "failures", str(failures))
            pipe.zadd(self.due_key, {webhook_id: at}, xx=True)
            pipe.delete(self.claim_key(webhook_id))
            pipe.execute()

    def length(self) -> int:
        """Events waiting (due now or later)."""
        with self.store.redis_errors():
            return int(self.client.zcard(self.due_key))

    def lead(self, holder: str, seconds: int) -> bool:
        """Whether `holder` may run the periodic scan now: True for one process per
        `seconds` (SET NX EX; never released early, so the next scan is that much later)."""
        with self.store.redis_errors():
            return bool(self.client.set(self.scan_key, holder, nx=True, ex=seconds))


def _number(raw: str | None) -> float | None:
    """A number stored in the event hash; None when absent or edited into something else."""
    try:
        value = float(raw) if raw is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) and abs(value) < 1e15 else None
