"""Rate limits counted across every process sharing one Redis, in leased batches.

Each counter (`Limited.key`) has one Redis key per aligned window,
`{prefix}rl:<key>:<unit><window>`, expiring a minute after the window. A process takes k
permits with one atomic INCRBY and hands them out from memory, so an unreached limit costs
a round trip per lease, not per request. k follows the rate this process sees (about
LEASE_SECONDS of traffic) and is at most 1/MAX_LEASE_SHARE of the limit: what a process
may leave unused at the end of a window is small. Never more than N are allowed in a
window: a lease is only what INCRBY leaves under N, and once the counter reaches N no
process asks again before the next window.

When Redis cannot answer, a request that needs a limit fails closed (503) unless
`--rate-limit-on-error allow`, which lets it through uncounted; Redis is asked again at
most once a second per counter meanwhile.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import chain

from extauthz.core.bounded import ENTRY_OVERHEAD, BoundedDict
from extauthz.core.decision import Decision, rate_limited, unavailable
from extauthz.core.rate_limit import Limited
from extauthz.errors import StoreError
from extauthz.storage.store import Store

LEASE_SECONDS = 0.25  # a lease lasts about this long at the rate this process sees
MAX_LEASE_SHARE = 50  # a lease is at most 1/50 of the limit
RETRY_AFTER_ERROR = 1.0  # seconds before Redis is asked again for a counter it failed
MAX_COUNTERS = 100_000
MAX_COUNTER_BYTES = 32 << 20
_FAILED = -1.0  # _take: Redis could not count


def _no_permits() -> Iterator[int]:
    return iter(())


@dataclass
class _Lease:
    window: int
    starts: float  # the window's first second
    ends: float  # and the first after it
    # the permits held: each next() that yields hands one out. next() on a C iterator is
    # atomic under the GIL, so the common case takes no lock (see RateLimiter.admit)
    permits: Iterator[int] = field(default_factory=_no_permits)
    granted: int = 0  # permits of the last refill
    exhausted: bool = False  # the counter reached the limit: none left this window
    rate: float = 0.0  # permits a second this process hands out (moving average)
    refilled_at: float = 0.0
    failed_until: float = 0.0


class RateLimiter:
    """Admits allows that carry rate limits, or turns them into 429s (or 503s)."""

    def __init__(self, store: Store, on_error: str = "deny") -> None:
        self.store = store
        self.allow_on_error = on_error == "allow"
        self._leases: BoundedDict[str, _Lease] = BoundedDict(MAX_COUNTERS, MAX_COUNTER_BYTES)
        self._lock = threading.Lock()  # refills, new leases, failures: not the common case

    def admit(self, decision: Decision, now: float) -> Decision:
        """`decision` (an allow with limits) if every counter gives a permit; else the 429
        of the first that does not, or a 503 when Redis cannot count (fail closed)."""
        leases = self._leases
        for limited in decision.limits:
            lease = leases.get(limited.lease)
            if (
                lease is not None
                and lease.starts <= now < lease.ends
                and next(lease.permits, None) is not None
            ):
                continue  # a permit held in memory: no lock, no Redis
            wait = self._take(limited, now)
            if wait is None:
                continue
            if wait == _FAILED:
                if self.allow_on_error:
                    continue
                return unavailable("rate_limit_unavailable")
            return rate_limited(limited, wait, decision)
        return decision

    def _take(self, limited: Limited, now: float) -> float | None:
        """None: a permit; else seconds until the next window, or _FAILED."""
        limit = limited.limit
        window = limit.window(now)
        # a new limit (token update, sync) starts from a new lease at once; the count in
        # Redis stays that of the window
        held = limited.lease
        with self._lock:
            lease = self._leases.get(held)
            if lease is None or lease.window != window:
                starts = float(window * limit.seconds)
                rate = lease.rate if lease is not None else 0.0
                lease = _Lease(window, starts, starts + limit.seconds, rate=rate)
                self._leases.put(held, lease, ENTRY_OVERHEAD + 2 * len(held))
            if next(lease.permits, None) is not None:  # another thread refilled it
                return None
            if lease.exhausted:
                return limit.window_end(now) - now
            if now < lease.failed_until:
                return _FAILED
            wanted = max(
                1, min(limit.count // MAX_LEASE_SHARE, math.ceil(lease.rate * LEASE_SECONDS))
            )
        try:
            total = self.store.take_permits(
                f"{limited.key}:{limit.unit}{window}", wanted, limit.window_end(now) + 60
            )
        except StoreError:
            with self._lock:
                lease.failed_until = now + RETRY_AFTER_ERROR
            return _FAILED
        granted = max(0, min(wanted, limit.count - (total - wanted)))
        with self._lock:
            lease.exhausted = total >= limit.count
            if lease.refilled_at:
                elapsed = max(now - lease.refilled_at, 1e-3)
                lease.rate = 0.5 * lease.rate + 0.5 * (lease.granted + 1) / elapsed
            lease.refilled_at, lease.granted = now, granted
            if granted == 0:
                return limit.window_end(now) - now
            # one permit is this request's; the rest join what is held (another thread may be
            # taking from those right now: chained, never counted again)
            lease.permits = chain(lease.permits, range(granted - 1))
            return None
