"""Tickets: what an allow on an LLM route hands to the counting of its response, signed.

Check's dynamic metadata names whom a response is charged to and what its reservation was
(`token_id`, `route`, `model`, and the limiter's `token_limits`); Envoy hands it back with
the response's usage (the access-log record of the Lua filter, or ext_proc), on the Check
port. Whoever could reach that port could otherwise send records of their own: settle
reservations they never made (credit a team's budget without end, or owe it a debt that
blocks it) or charge usage to any token. So the allow carries `ticket`, an HMAC-SHA256
(version 1) over those fields, with a key every extauthz process sharing one Redis reads
from `{prefix}tl:ticket-key` (made once, at random, by the first that needs it); a record
whose ticket does not verify is not counted at all (its reservation stays, fail closed).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading

from extauthz.errors import StoreError
from extauthz.storage.store import Store

log = logging.getLogger("extauthz.llm")
TICKET_KEY = "ticket"  # dynamic metadata key of the signature
VERSION = "1"


def _payload(token_id: str, route: str, model: str, token_limits: str) -> bytes:
    return "\n".join((VERSION, token_id, route, model, token_limits)).encode()


class Tickets:
    """Signs allows and verifies the records that come back, with the deployment's key."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._key: bytes | None = None
        self._lock = threading.Lock()

    def _secret(self) -> bytes | None:
        """The shared key (read from Redis once; made there by the first process that needs
        it); None while Redis cannot say."""
        if self._key is None:
            with self._lock:
                if self._key is None:
                    try:
                        self._key = self.store.ticket_secret(secrets.token_hex(32)).encode()
                    except StoreError as e:
                        log.warning("cannot read the ticket key from Redis (%s)", e)
                        return None
        return self._key

    def sign(self, token_id: str, route: str, model: str, token_limits: str) -> str | None:
        """`v1:<hex HMAC>` of what the counting will read; None while the key is unknown."""
        key = self._secret()
        if key is None:
            return None
        mac = hmac.new(key, _payload(token_id, route, model, token_limits), hashlib.sha256)
        return f"v{VERSION}:{mac.hexdigest()}"

    def valid(self, token_id: str, route: str, model: str, token_limits: str, ticket: str) -> bool:
        """Whether `ticket` is this deployment's signature of these fields."""
        expected = self.sign(token_id, route, model, token_limits)
        return expected is not None and hmac.compare_digest(expected, ticket)
