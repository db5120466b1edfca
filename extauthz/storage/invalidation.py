"""The invalidation listener: keeps the token cache and the policy snapshot honest.

One thread holds a Redis pub/sub connection subscribed to
- keyspace notifications for `{prefix}token:*` (any change by anyone, `redis-cli` included:
  hset, del, expire, expired, evicted...) → that token is dropped from the cache; for
  `{prefix}team:*` → that team;
- keyspace notifications for `{prefix}policy` and the `{prefix}invalidate` channel (where
  the CLI and the sync job also publish) → the policy is reloaded at once.

At start it makes sure notifications are enabled (`CONFIG SET notify-keyspace-events`,
adding only missing flags). If that is refused (managed Redis, ACL), explicit messages
still arrive, and cached records live only `fallback_ttl` seconds, which bounds how long an
edit made by hand can go unseen. When the connection drops, the cache stops being trusted
until the listener is subscribed again (and then starts empty).

Notifications are local to a node, so with Sentinel or Cluster the listener subscribes on
the primary that holds the extauthz keys, checks every second that it still is the
primary, and moves (with the same distrust of the cache meanwhile) after a failover.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import NoPermissionError, RedisClusterException

from extauthz.errors import StoreError, StoreRefused
from extauthz.storage.client import PrimaryNode, redact_url
from extauthz.storage.store import Store
from extauthz.storage.token_cache import TokenCache

log = logging.getLogger("extauthz.invalidation")

REQUIRED_FLAGS = "Kghxe"  # keyspace events: generic, hash, expired, evicted
PRIMARY_CHECK_INTERVAL = 1.0  # seconds between "is it still the primary?" (Sentinel, Cluster)
HEARTBEAT_INTERVAL = 1.0  # seconds between refreshes of {prefix}servers:<id> (it lives 3 s)


class PrimaryMoved(redis.ConnectionError):
    """A failover elected another primary: listen there instead."""


def missing_flags(current: str) -> str:
    """Flags of REQUIRED_FLAGS not already enabled (`A` is the alias for g$lshzxet)."""
    have = set(current)
    if "A" in have:
        have |= set("g$lshzxet")
    return "".join(f for f in REQUIRED_FLAGS if f not in have)


class InvalidationListener:
    def __init__(
        self,
        url: str,
        store: Store,
        cache: TokenCache,
        on_policy_change: Callable[[], None],
        fallback_ttl: float = 0.5,
    ) -> None:
        self.url = url
        self.store = store
        self.cache = cache
        self.on_policy_change = on_policy_change
        self.fallback_ttl = fallback_ttl
        self.token_prefix = store.token_key("")
        self.team_prefix = store.team_key("")
        self.primary = PrimaryNode(url, store.policy_key)
        # how `token revoke|rotate` knows this process: it waits for our acknowledgements
        self.server_id = f"{socket.gethostname()}:{os.getpid()}"
        self._registered = False
        self._heartbeat_failing = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="invalidation", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()  # the thread sees it within a second (get_message's timeout)
        self._thread.join(timeout=3)
        self.primary.close()
        self._leave()

    def _run(self) -> None:
        backoff = ExponentialWithJitterBackoff(cap=5.0, base=0.05)
        failures = 0
        while not self._stop.is_set():
            try:
                self._listen()
            except (redis.RedisError, RedisClusterException, OSError) as e:
                # Any failure (lost connection, ACL refusing a channel...) must not kill the
                # thread: without it the cache is bypassed, which is correct, only slower.
                self.cache.set_channel_ok(False)
                if failures == 0:
                    hint = (
                        " (the Redis ACL user needs the channels listed in docs/operations.md)"
                        if isinstance(e, NoPermissionError)
                        else ""
                    )
                    log.warning(
                        "invalidation channel to %s failed (%s)%s: cache bypassed until it works",
                        redact_url(self.url),
                        e,
                        hint,
                    )
                failures += 1
                self._stop.wait(backoff.compute(failures))
            else:
                failures = 0

    def _listen(self) -> None:
        address = self.primary.locate()
        client = self.primary.open(address)
        self._enable_notifications(client)
        keyspace = f"__keyspace@{self.primary.db}__:"
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.psubscribe(keyspace + self.token_prefix + "*", keyspace + self.team_prefix + "*")
            pubsub.subscribe(keyspace + self.store.policy_key, self.store.invalidate_channel)
            # subscribed: from here on no change can go unseen; then reload what may have
            # changed while we were not listening
            while pubsub.get_message(timeout=0.2) is not None:
                pass
            if address is not None:
                self.store.follow_primary()  # reads go where the notifications come from
            self.cache.set_channel_ok(True)
            self.on_policy_change()
            where = "" if address is None else f" on primary {address[0]}:{address[1]}"
            log.info("invalidation channel subscribed%s", where)
            self._heartbeat()
            next_check = next_beat = time.monotonic() + PRIMARY_CHECK_INTERVAL
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=PRIMARY_CHECK_INTERVAL)
                if message is not None:
                    self._handle(message, keyspace)
                if time.monotonic() >= next_beat:
                    self._heartbeat()
                    next_beat = time.monotonic() + HEARTBEAT_INTERVAL
                if address is not None and time.monotonic() >= next_check:
                    # after a failover the old primary may still be up, but sees no writes
                    current = self.primary.locate()
                    if current != address:
                        raise PrimaryMoved(f"primary moved from {address} to {current}")
                    next_check = time.monotonic() + PRIMARY_CHECK_INTERVAL
        finally:
            self.cache.set_channel_ok(False)
            self._leave()
            pubsub.close()
            client.close()

    def _enable_notifications(self, client: Any) -> None:
        try:
            current = str(
                client.config_get("notify-keyspace-events").get("notify-keyspace-events", "")
            )
            missing = missing_flags(current)
            if missing:
                client.config_set("notify-keyspace-events", current + missing)
                log.info("enabled Redis keyspace notifications (%s)", current + missing)
        except redis.ResponseError as e:
            self.cache.use_fallback_ttl(self.fallback_ttl)
            log.warning(
                "cannot enable keyspace notifications (%s): cached tokens live %.1fs, "
                "so edits made by hand take up to that long",
                e,
                self.cache.ttl,
            )

    def _handle(self, message: dict[str, Any], keyspace: str) -> None:
        channel = str(message.get("channel", ""))
        if channel.startswith(keyspace):
            key = channel[len(keyspace) :]
            if key.startswith(self.token_prefix):
                self.cache.invalidate(key[len(self.token_prefix) :])
            elif key.startswith(self.team_prefix):
                self.cache.invalidate_team(key[len(self.team_prefix) :])
            elif key == self.store.policy_key:
                self.on_policy_change()
        elif channel == self.store.invalidate_channel:
            data, _, nonce = str(message.get("data", "")).partition(" ")
            if data == "policy":
                self.on_policy_change()
            elif data == "*":
                self.cache.clear()
            else:
                self.cache.invalidate(data)
            if nonce:  # the sender waits until every live server has handled it
                self._acknowledge(nonce)

    def _acknowledge(self, nonce: str) -> None:
        try:
            self.store.acknowledge(nonce, self.server_id)
        except StoreError as e:
            log.warning("cannot acknowledge an invalidation (%s)", e)

    def _heartbeat(self) -> None:
        """Register this server as live (only while subscribed: a revoke waits for it)."""
        try:
            self.store.heartbeat(self.server_id)
            self._registered, self._heartbeat_failing = True, False
        except StoreError as e:
            if not self._heartbeat_failing:
                self._heartbeat_failing = True
                why = (  # a timeout is no reason to look at the ACL
                    "the Redis ACL user needs the rights listed in docs/operations.md"
                    if isinstance(e, StoreRefused)
                    else "Redis did not answer in time, or cannot be reached: retried every second"
                )
                log.warning(
                    "cannot register in %s (%s): `token revoke` will not wait for this server (%s)",
                    self.store.servers_prefix + self.server_id,
                    e,
                    why,
                )

    def _leave(self) -> None:
        if self._registered:
            with contextlib.suppress(StoreError):
                self.store.leave(self.server_id)
            self._registered = False
