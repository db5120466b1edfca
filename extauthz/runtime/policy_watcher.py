"""The policy watcher: a daemon thread that reloads the published policy when its version
changes, and whose polls are the heartbeat telling the token cache that Redis answers."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from extauthz.errors import MalformedRecord, StoreError
from extauthz.runtime.authorizer import Authorizer
from extauthz.storage.redis_health import RedisHealth

watch_log = logging.getLogger("extauthz.policy")


class PolicyWatcher:
    """A daemon thread that calls `authorizer.refresh_policy()` every `interval` seconds."""

    def __init__(
        self,
        authorizer: Authorizer,
        interval: float,
        health: RedisHealth,
        on_poll: Callable[[], None] | None = None,
    ) -> None:
        """Every poll reports to `health`; `on_poll()` runs after it (health, warnings)."""
        self.authorizer = authorizer
        self.health = health
        self.on_poll = on_poll
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="policy-watcher", daemon=True)
        self._lock = threading.Lock()

    def start(self) -> None:
        self.poll()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)

    def poll(self) -> None:
        """Reload the policy if it changed; also the heartbeat that tells whether Redis is up."""
        with self._lock:
            try:
                self.authorizer.refresh_policy()
            except MalformedRecord as e:  # Redis answered; what it holds is off-shape
                watch_log.error("published policy is malformed (%s): keeping the last one", e)
            except StoreError as e:  # unavailable, refused (ACL), an error reply
                if self.health.store_answered(False):
                    watch_log.warning(
                        "cannot read the policy from Redis (%s): keeping the last one", e
                    )
                return
            if self.health.store_answered(True):
                watch_log.info("Redis reachable again")

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()
            self.authorizer.log_suppressed()
            if self.on_poll is not None:
                self.on_poll()
