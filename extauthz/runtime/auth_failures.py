"""Failed authentications per client address: a token bucket each, so one client cannot
drive Redis with random credentials.

Every 401 for a presented credential takes one token from its address's bucket (`burst`
tokens, refilled at `rate` per second). An address whose bucket is empty gets 429 with
`Retry-After` for any credential that would need a Redis lookup; credentials already in
the cache still answer as usual (they cost Redis nothing). IPv6 addresses count per /64,
the block one subscriber usually holds. The table is bounded (oldest addresses go first),
and each worker process keeps its own.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from extauthz.core.bounded import BoundedDict, text_size
from extauthz.core.rate_limit import client_key

MAX_ADDRESSES = 100_000


class FailureLimiter:
    """Token buckets of failed authentications, by client address."""

    def __init__(
        self,
        rate: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        max_addresses: int = MAX_ADDRESSES,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        # key → (tokens left, when counted); a bucket refills to `burst`, then is forgotten
        self._buckets: BoundedDict[str, tuple[float, float]] = BoundedDict(
            max_addresses, max_addresses * 300
        )
        self._lock = threading.Lock()
        self._any_blocked_until = -math.inf  # no address is blocked after this moment

    def _tokens(self, key: str, now: float) -> float:
        entry = self._buckets.get(key)
        if entry is None:
            return float(self.burst)
        tokens, then = entry
        return min(float(self.burst), tokens + (now - then) * self.rate)

    def retry_after(self, address: str) -> float | None:
        """None when `address` may present credentials; else seconds until it may again."""
        now = self.clock()
        if now >= self._any_blocked_until:  # the common case: nobody is blocked
            return None
        tokens = self._tokens(client_key(address), now)
        return None if tokens >= 1 else (1 - tokens) / self.rate

    def failed(self, address: str) -> None:
        """Count one failed authentication from `address`."""
        key = client_key(address)
        with self._lock:
            now = self.clock()
            tokens = max(0.0, self._tokens(key, now) - 1)  # no debt: blocked ≤ 1/rate s
            self._buckets.put(key, (tokens, now), text_size((key,)))
            if tokens < 1:
                until = now + (1 - tokens) / self.rate
                self._any_blocked_until = max(self._any_blocked_until, until)
