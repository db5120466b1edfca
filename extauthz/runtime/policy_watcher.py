"""The policy watcher: a daemon thread that reloads the published policy when its version
changes, and whose polls are the heartbeat telling the token cache that Redis answers."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from extauthz.errors import MalformedRecord, StoreUnavailable
from extauthz.runtime.authorizer import Authorizer

watch_log = logging.getLogger("extauthz.policy")


class PolicyWatcher:
    """A daemon thread that calls `authorizer.refresh_policy()` every `interval` seconds."""

    def __init__(
        self,
        authorizer: Authorizer,
        interval: float,
        on_poll: Callable[[bool], None] | None = None,
    ) -> None:
        """`on_poll(redis_ok)` runs after every poll (health, periodic warnings)."""
        self.authorizer = authorizer
        self.on_poll = on_poll
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="policy-watcher", daemon=True)
        self._failing = False
        self._lock = threading.Lock()

    def start(self) -> None:
        self.poll()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)

    def poll(self) -> None:
        """Reload the policy if it changed; also the heartbeat that tells the cache Redis is up."""
        cache = self.authorizer.cache
        with self._lock:
            try:
                self.authorizer.refresh_policy()
            except StoreUnavailable as e:
                if cache is not None:
                    cache.set_store_ok(False)
                if not self._failing:
                    watch_log.warning(
                        "cannot read the policy from Redis (%s): keeping the last one", e
                    )
                self._failing = True
                return
            except MalformedRecord as e:
                watch_log.error("published policy is malformed (%s): keeping the last one", e)
            if cache is not None:
                cache.set_store_ok(True)
            if self._failing:
                watch_log.info("Redis reachable again")
            self._failing = False

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()
            self.authorizer.log_suppressed()
            if self.on_poll is not None:
                self.on_poll(not self._failing)
