"""Tickets: what an allow on an LLM route hands to the counting of its response, signed and
counted once.

Check's dynamic metadata names whom a response is charged to and what its reservation was
(`token_id`, `route`, `model`, and the limiter's `token_limits`); Envoy hands it back with
the response's usage (the access-log record of the Lua filter, or ext_proc), on the Check
port. So the allow carries `ticket`: `v1:<nonce>:<HMAC-SHA256>` over a random nonce and those
fields, with a key every extauthz process sharing one Redis reads from
`{prefix}tickets:key` (made once, at random, by the first that needs it). A record is
counted only if its ticket verifies, and only once: the first record of a nonce claims it in
Redis (`{prefix}tickets:counted:<nonce>`, SET NX, kept until the reservation's window ends, an
hour without one), so a record sent again settles and charges nothing. A record that fails
either is not counted (its reservation stays: fail closed).

What the ticket cannot stop: whoever can reach the Check port can send the first record of
an allow it was given, with a usage of its choosing. The port must answer Envoy only
(mutual TLS, as shipped; docs/security.md).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable

from extauthz.errors import StoreError
from extauthz.storage.store import Store

log = logging.getLogger("extauthz.llm")
TICKET_KEY = "ticket"  # dynamic metadata key of the signature
VERSION = "1"
RETRY_AFTER_ERROR = 1.0  # seconds before Redis is asked again for the key after a failure
UNRESERVED_CLAIM = 3600  # seconds a nonce without a reservation stays claimed
WARN_EVERY = 60.0


def _payload(nonce: str, token_id: str, route: str, model: str, token_limits: str) -> bytes:
    return "\n".join((VERSION, nonce, token_id, route, model, token_limits)).encode()


def _claim_until(token_limits: str, now: float) -> int:
    """Until when a nonce stays claimed: its reservation's window end (+60 s), else an hour."""
    try:
        reserved = json.loads(token_limits)  # [tokens, counters] (+ [cost, counters, price])
        counters = reserved[1] + (reserved[3] if len(reserved) == 5 else [])
        ends = max(int(end) for _, _, end in counters)
    except (ValueError, TypeError, OverflowError, RecursionError, IndexError, KeyError):
        ends = int(now) + UNRESERVED_CLAIM
    return max(ends + 60, int(now) + 60)


class Tickets:
    """Signs allows and verifies the records that come back, with the deployment's key."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.clock = clock
        self._key: bytes | None = None
        self._lock = threading.Lock()
        self._failed_until = 0.0
        self._reread_at = 0.0
        self._warned_at = -WARN_EVERY

    def _secret(self, reread: bool = False) -> bytes | None:
        """The shared key (read from Redis once, and again when a ticket does not verify,
        at most once a second; made there by the first process that needs it); None while
        Redis cannot say (asked again a second later, not on every request)."""
        now = self.clock()
        if self._key is not None and not (reread and now >= self._reread_at):
            return self._key
        with self._lock:
            if self._key is not None and not (reread and now >= self._reread_at):
                return self._key
            if now < self._failed_until:
                return self._key
            try:
                self._key = self.store.ticket_secret(secrets.token_hex(32)).encode()
                self._reread_at = now + RETRY_AFTER_ERROR
            except StoreError as e:
                self._failed_until = now + RETRY_AFTER_ERROR
                if now - self._warned_at >= WARN_EVERY:
                    self._warned_at = now
                    log.warning("cannot read the ticket key from Redis (%s)", e)
            return self._key

    def sign(self, token_id: str, route: str, model: str, token_limits: str) -> str | None:
        """The ticket of an allow; None while the key is unknown."""
        key = self._secret()
        if key is None:
            return None
        nonce = secrets.token_hex(12)
        return f"v{VERSION}:{nonce}:{self._mac(key, nonce, token_id, route, model, token_limits)}"

    @staticmethod
    def _mac(key: bytes, nonce: str, token_id: str, route: str, model: str, limits: str) -> str:
        payload = _payload(nonce, token_id, route, model, limits)
        return hmac.new(key, payload, hashlib.sha256).hexdigest()

    def verified(
        self, token_id: str, route: str, model: str, token_limits: str, ticket: str
    ) -> str | None:
        """The nonce of `ticket` when it is this deployment's signature of these fields."""
        version, _, rest = ticket.partition(":")
        nonce, _, mac = rest.partition(":")
        if version != f"v{VERSION}" or len(nonce) != 24 or len(mac) != 64:
            return None
        for reread in (False, True):  # (a key made anew since this process read it)
            key = self._secret(reread)
            if key is None:
                return None
            expected = self._mac(key, nonce, token_id, route, model, token_limits)
            if hmac.compare_digest(expected, mac):
                return nonce
        return None

    def claim(self, nonce: str, token_limits: str, now: float) -> bool:
        """Whether this is the first record of `nonce` (claimed now); False for one counted
        already, and when Redis cannot say (not counted: its reservation stays)."""
        try:
            return self.store.claim_ticket(nonce, _claim_until(token_limits, now))
        except StoreError as e:
            log.warning("cannot claim an LLM record in Redis (%s): not counted", e)
            return False
