"""One view of whether Redis can be trusted, read by the token cache, health and metrics.

Two facts make it up: Redis answers commands (the policy watcher's polls and the token
cache's lookups report), and the invalidation channel is subscribed (the listener reports).
Cached answers are trusted only while both hold. Observers hear every change of trust, in
order (the token cache starts empty when trust returns); health reads how long Redis has not
answered.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class RedisHealth:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.store_ok = True  # until a command fails
        self.channel_ok = False  # until the listener has subscribed
        self._down_since: float | None = None
        self._observers: list[Callable[[bool], None]] = []
        self._lock = threading.Lock()

    @property
    def trusted(self) -> bool:
        """Both hold: invalidations arrive and Redis answers."""
        return self.store_ok and self.channel_ok

    def observe(self, on_trust: Callable[[bool], None]) -> None:
        """Call `on_trust(trusted)` at every change of trust (under this object's lock: keep
        it short, and never report back from it)."""
        self._observers.append(on_trust)

    def store_answered(self, ok: bool) -> bool:
        """Report whether the last Redis command got an answer; True when that changed."""
        if ok == self.store_ok:
            return False
        with self._lock:
            if ok == self.store_ok:
                return False
            before = self.trusted
            self.store_ok = ok
            self._down_since = None if ok else self.clock()
            self._notify(before)
            return True

    def channel_subscribed(self, ok: bool) -> None:
        """Report whether the invalidation channel is subscribed."""
        with self._lock:
            before = self.trusted
            self.channel_ok = ok
            self._notify(before)

    def down_for(self) -> float:
        """Seconds since Redis stopped answering (0 while it answers)."""
        since = self._down_since
        return 0.0 if since is None else self.clock() - since

    def _notify(self, before: bool) -> None:
        trusted = self.trusted
        if trusted != before:
            for on_trust in self._observers:
                on_trust(trusted)
