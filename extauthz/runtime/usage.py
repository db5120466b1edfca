"""Usage metering: per token and UTC day, allowed and rate-limited requests, and when each
token was last used; counted in memory, written to Redis in pipelined batches.

The decision path only adds to a dict (under a lock). `flush` swaps the counts out and
writes them with one pipeline (HINCRBY into the day's hash, ZADD GT for last used): at most
every `--usage-flush` seconds (default 10), from the policy watcher's thread, and once more
when the server stops (SIGTERM loses nothing). A flush Redis refuses keeps the counts for
the next one. Nothing is ever written to a token's own key: that would fire the keyspace
notification that empties every server's cache.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from extauthz.errors import StoreError
from extauthz.storage.store import Store

log = logging.getLogger("extauthz.usage")

DAY = 86400
MAX_PENDING = 100_000  # (token, day) pairs held between flushes; more are counted as dropped


class UsageMeter:
    """Counts requests per token and day until the next flush."""

    def __init__(
        self,
        store: Store,
        flush_every: float = 10.0,
        retention_days: int = 90,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.flush_every = flush_every
        self.retention_days = retention_days
        self.clock = clock
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, int], list[int]] = {}  # (token id, day) → [allowed, limited]
        self._last: dict[str, float] = {}
        self._flushed_at = clock()
        self.dropped = 0

    def count(self, token_id: str, allowed: bool, now: float) -> None:
        """One request of this token: allowed, or refused by a rate limit."""
        key = (token_id, int(now // DAY))
        lock = self._lock
        lock.acquire()  # (not `with`: its __enter__/__exit__ lookups double the cost)
        try:
            counts = self._counts.get(key)
            if counts is None:
                if len(self._counts) >= MAX_PENDING:
                    self.dropped += 1
                    return
                counts = self._counts[key] = [0, 0]
            counts[0 if allowed else 1] += 1
            self._last[token_id] = now
        finally:
            lock.release()

    def maybe_flush(self) -> None:
        """Flush if `flush_every` seconds have passed since the last one."""
        if self.clock() - self._flushed_at >= self.flush_every:
            self.flush()

    def flush(self) -> bool:
        """Write what was counted; on failure keep it for the next flush. True when written."""
        self._flushed_at = self.clock()
        with self._lock:
            counts, self._counts = self._counts, {}
            last, self._last = self._last, {}
        if not counts:
            return True
        try:
            self.store.add_usage(counts, last, self.retention_days)
        except StoreError as e:
            log.warning("usage not written (kept for the next flush): %s", e)
            with self._lock:
                for key, (allowed, limited) in counts.items():
                    mine = self._counts.setdefault(key, [0, 0])
                    mine[0] += allowed
                    mine[1] += limited
                for token_id, when in last.items():
                    self._last[token_id] = max(when, self._last.get(token_id, 0.0))
            return False
        return True
