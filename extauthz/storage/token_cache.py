"""An in-process cache of token (and team) records in front of Redis, safe for revocation.

- Hits never touch Redis. Entries live at most `ttl` seconds (and never past the record's
  own `expires_at`: the decision checks expiry on every call anyway).
- Unknown tokens are cached too (`negative_ttl`), so a flood of random tokens cannot
  hammer Redis; both maps are bounded (oldest evicted first).
- Concurrent misses for one hash share a single Redis fetch.
- Invalidation comes from `invalidate()` (keyspace notifications, explicit messages): a
  fetch that raced with any invalidation is not cached.
- Team records share the cache, its bounds and its epoch, under the key `team:<id>` (no
  SHA-256 hex digest starts so): a changed team invalidates like a changed token.
- The cache is only trusted while invalidations are being received and Redis answers
  (one shared RedisHealth says so); once either is not so, entries are served for at
  most `stale_grace` seconds (default 0: every lookup goes to Redis, which fails closed
  when Redis is down). Becoming trusted again starts from an empty cache.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from extauthz.core.bounded import BoundedDict, text_size
from extauthz.core.team_record import TeamRecord
from extauthz.core.token_record import TokenRecord
from extauthz.errors import MalformedRecord, StoreError, StoreUnavailable
from extauthz.storage.redis_health import RedisHealth

Fetch = Callable[[str], TokenRecord | None]
FetchTeam = Callable[[str], TeamRecord | None]
Record = TokenRecord | TeamRecord
TEAM = "team:"  # the cache key of a team: TEAM + its id
NEGATIVE_TTL = 5.0  # seconds an unknown token stays cached (the server's setting)


def _no_teams(team_id: str) -> TeamRecord | None:
    return None


@dataclass(slots=True)
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    invalidations: int = 0


class _Flight:
    __slots__ = ("done", "error", "generation", "record")

    def __init__(self, generation: int) -> None:
        self.generation = generation  # a later invalidation makes its answer too old to share
        self.done = threading.Event()
        self.record: Any = None
        self.error: BaseException | None = None


class TokenCache:
    """Callable like `Store.token_record`: hash → record or None."""

    def __init__(
        self,
        fetch: Fetch,
        *,
        ttl: float = 60.0,
        negative_ttl: float = NEGATIVE_TTL,
        max_entries: int = 100_000,
        max_negative: int = 10_000,
        max_bytes: int = 64 << 20,
        stale_grace: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        health: RedisHealth | None = None,
        fetch_team: FetchTeam = _no_teams,
    ) -> None:
        self.fetch = fetch
        self.fetch_team = fetch_team
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.stale_grace = stale_grace
        self.clock = clock
        self.stats = CacheStats()
        # hash → (record, valid until) and hash → valid until; bounded by entries and bytes
        self._records: BoundedDict[str, tuple[Any, float]] = BoundedDict(max_entries, max_bytes)
        self._unknown: BoundedDict[str, float] = BoundedDict(max_negative, max_bytes // 16)
        self._flights: dict[str, _Flight] = {}
        self._lock = threading.Lock()
        self._generation = 0  # bumped by every invalidation
        self._trusted = False  # follows self.health (see _on_trust)
        self._untrusted_since = -float("inf")
        self._events = True  # every change arrives as an invalidation (not just the ttl)
        # A number that changes whenever any cached answer may have changed; None when
        # answers are not kept honest by invalidations alone (untrusted, or ttl fallback).
        # What was derived from lookups made at one epoch holds while it stays the same.
        # An attribute (set by _publish_epoch), read on the decision path without a call.
        self.current_epoch: int | None = None
        self.health = health if health is not None else RedisHealth()
        self.health.observe(self._on_trust)
        self._on_trust(self.health.trusted)

    # --- invalidation -----------------------------------------------------------------------

    def set_channel_ok(self, ok: bool) -> None:
        """Whether the invalidation channel is connected and subscribed (→ the health)."""
        self.health.channel_subscribed(ok)

    def set_store_ok(self, ok: bool) -> None:
        """Whether Redis answered the last command (→ the health)."""
        self.health.store_answered(ok)

    def _on_trust(self, trusted: bool) -> None:
        with self._lock:
            if trusted and not self._trusted:
                self._clear_locked()  # what was cached before may have changed unseen
            elif not trusted and self._trusted:
                self._untrusted_since = self.clock()
                self._generation += 1
            self._trusted = trusted
            self._publish_epoch()

    def use_fallback_ttl(self, ttl: float) -> None:
        """Hand edits arrive as no invalidation (no keyspace notifications): `ttl` bounds them."""
        with self._lock:
            self.ttl = min(self.ttl, ttl)
            self._events = False
            self._generation += 1
            self._publish_epoch()

    def _publish_epoch(self) -> None:
        """Set current_epoch after any change of generation, trust or events (under the
        lock): a reader never sees an epoch older than the last change made."""
        self.current_epoch = self._generation if self._trusted and self._events else None

    def invalidate(self, digest: str) -> None:
        with self._lock:
            self._generation += 1
            self._publish_epoch()
            self.stats.invalidations += 1
            self._records.pop(digest)
            self._unknown.pop(digest)

    def clear(self) -> None:
        with self._lock:
            self._clear_locked()

    def _clear_locked(self) -> None:
        self._generation += 1
        self._publish_epoch()
        self._records.clear()
        self._unknown.clear()

    # --- lookup -------------------------------------------------------------------------------

    def _usable(self, now: float) -> bool:
        return self._trusted or now - self._untrusted_since < self.stale_grace

    def cached(self, digest: str) -> tuple[bool, Any]:
        """(True, record or None) when the cache can answer without Redis, else (False, None)."""
        now = self.clock()
        if self._usable(now):
            entry = self._records.get(digest)
            if entry is not None and now < entry[1]:
                return True, entry[0]
            until = self._unknown.get(digest)
            if until is not None and now < until:
                return True, None
        return False, None

    def __call__(self, digest: str) -> TokenRecord | None:
        found, record = self.cached(digest)
        if found:
            self.stats.hits += 1
            return record  # type: ignore[no-any-return]
        self.stats.misses += 1
        return self._fetch_once(digest)  # type: ignore[no-any-return]

    def team(self, team_id: str) -> TeamRecord | None:
        """The record of a team (cached as tokens are), None when there is none."""
        found, record = self.cached(TEAM + team_id)
        if not found:
            record = self._fetch_once(TEAM + team_id)
        return record if isinstance(record, TeamRecord) else None

    def invalidate_team(self, team_id: str) -> None:
        self.invalidate(TEAM + team_id)

    def _fetch_once(self, digest: str) -> Any:
        with self._lock:
            generation = self._generation
            flight = self._flights.get(digest)
            # join a fetch only if no invalidation came since it started: its Redis read may
            # predate a revocation that a caller was already told about
            leader = flight is None or flight.generation != generation
            if flight is None or leader:
                flight = self._flights[digest] = _Flight(generation)
        if not leader:
            flight.done.wait(timeout=1.0)
            if flight.error is not None:
                raise flight.error
            if not flight.done.is_set():
                raise StoreUnavailable("token lookup did not finish in time")
            return flight.record
        try:
            if digest.startswith(TEAM):
                record: Record | None = self.fetch_team(digest[len(TEAM) :])
            else:
                record = self.fetch(digest)
        except MalformedRecord as e:
            flight.error = e
            raise
        except StoreError as e:  # unavailable, refused...: Redis cannot vouch for the cache
            flight.error = e
            self.set_store_ok(False)
            raise
        else:
            flight.record = record
            self._store(digest, record, generation)
            return record
        finally:
            with self._lock:
                if self._flights.get(digest) is flight:
                    del self._flights[digest]
            flight.done.set()

    def _store(self, digest: str, record: Record | None, generation: int) -> None:
        with self._lock:
            if generation != self._generation or not self._trusted:
                return  # an invalidation raced with the fetch, or nothing would tell us
            now = self.clock()
            if record is None:
                self._unknown.put(digest, now + self.negative_ttl, text_size((digest,)))
            else:
                self._records.put(digest, (record, now + self.ttl), _size(digest, record))
            self.stats.evictions = self._records.evictions + self._unknown.evictions

    def __len__(self) -> int:
        return len(self._records) + len(self._unknown)


def _size(key: str, record: Record) -> int:
    """About what an entry holds, for the cache's byte bound."""
    if isinstance(record, TeamRecord):
        return text_size((key, record.id, record.name, *(record.models or ())))
    return text_size((key, record.id, record.name, *record.routes, *record.scopes))
