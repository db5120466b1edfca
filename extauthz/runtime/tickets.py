"""Tickets: what an allow on an LLM route hands to the counting of its response, signed and
counted once.

Check's dynamic metadata names whom a response is charged to and what its reservation was
(`token_id`, `route`, `model`, and the limiter's `token_limits`); Envoy hands it back with
the response's usage (the access-log record of the Lua filter, or ext_proc), on the Check
port. So the allow carries `ticket`: `v2:<nonce>:<issued>:<HMAC-SHA256>` over a random nonce,
the second it was issued and those fields, with a key every extauthz process sharing one
Redis reads from `{prefix}tickets:key` (made once, at random, by the first that needs it). A
record is counted only if its ticket verifies, was issued within MAX_RECORD_AGE, and only
once: the first record of a nonce claims it in Redis. Claims are made in batches (`Claims`:
at most one MULTI/EXEC every CLAIM_EVERY seconds, the first after a quiet spell at once), in
a set per hour of issue, `{prefix}tickets:counted:<hour>`, kept until no record of that hour
can be counted any more: the warm path stays well under 0.1 Redis commands an LLM request.
A record sent again settles and charges nothing; a record that fails any of these is not
counted (its reservation stays: fail closed).

What the ticket cannot stop: whoever can reach the Check port can send the first record of
an allow it was given, with a usage of its choosing. The port must answer Envoy only
(mutual TLS, as shipped; docs/security.md).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

from extauthz.errors import StoreError
from extauthz.storage.store import Store

log = logging.getLogger("extauthz.llm")
TICKET_KEY = "ticket"  # dynamic metadata key of the signature
VERSION = "2"
RETRY_AFTER_ERROR = 1.0  # seconds before Redis is asked again for the key after a failure
MAX_RECORD_AGE = 2 * 3600  # seconds after its allow a response's record is still counted
MAX_SKEW = 300  # seconds a ticket may seem to come from the future (clocks of two hosts)
CLAIM_EVERY = 1.0  # seconds between two batches of claims (4 Redis commands each)
WARN_EVERY = 60.0


def _payload(
    nonce: str, issued: int, token_id: str, route: str, model: str, token_limits: str
) -> bytes:
    return "\n".join((VERSION, nonce, str(issued), token_id, route, model, token_limits)).encode()


class Verified(NamedTuple):
    """A record's ticket, verified: its nonce and the second it was issued."""

    nonce: str
    issued: int


class Tickets:
    """Signs allows and verifies the records that come back, with the deployment's key."""

    def __init__(
        self,
        store: Store,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.clock = clock
        self.wall = wall
        self._key: bytes | None = None
        self._lock = threading.Lock()
        self._failed_until = 0.0
        self._reread_at = 0.0
        self._expiring: set[int] = set()  # hours whose claims set this process gave an expiry
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
        nonce, issued = secrets.token_hex(12), int(self.wall())
        mac = self._mac(key, nonce, issued, token_id, route, model, token_limits)
        return f"v{VERSION}:{nonce}:{issued}:{mac}"

    @staticmethod
    def _mac(
        key: bytes, nonce: str, issued: int, token_id: str, route: str, model: str, limits: str
    ) -> str:
        payload = _payload(nonce, issued, token_id, route, model, limits)
        return hmac.new(key, payload, hashlib.sha256).hexdigest()

    def verified(
        self, token_id: str, route: str, model: str, token_limits: str, ticket: str
    ) -> Verified | None:
        """The nonce and issue time of `ticket` when it is this deployment's signature of
        these fields, issued within MAX_RECORD_AGE (a record older than that could have been
        counted already in a claim Redis has let go)."""
        parts = ticket.split(":")
        if len(parts) != 4:
            return None
        version, nonce, issued_text, mac = parts
        if version != f"v{VERSION}" or len(nonce) != 24 or len(mac) != 64:
            return None
        if not (issued_text.isascii() and issued_text.isdigit() and len(issued_text) <= 12):
            return None
        issued = int(issued_text)
        if not -MAX_SKEW <= self.wall() - issued <= MAX_RECORD_AGE:
            return None
        for reread in (False, True):  # (a key made anew since this process read it)
            key = self._secret(reread)
            if key is None:
                return None
            expected = self._mac(key, nonce, issued, token_id, route, model, token_limits)
            if hmac.compare_digest(expected, mac):
                return Verified(nonce, issued)
        return None

    def claim(self, records: Sequence[Verified]) -> list[bool]:
        """Whether each record is the first of its nonce (claimed now, in one MULTI/EXEC per
        hour of issue); False for one counted already (also earlier in `records`), and for
        all when Redis cannot say (not counted: their reservations stay)."""
        hours: dict[int, list[str]] = {}
        for record in records:
            hours.setdefault(record.issued // 3600, []).append(record.nonce)
        first: dict[str, bool] = {}
        for hour, nonces in hours.items():
            unique = list(dict.fromkeys(nonces))
            keep_until = (hour + 1) * 3600 + MAX_RECORD_AGE + MAX_SKEW
            expiring = hour in self._expiring  # (this process gave the set its expiry)
            try:
                new = self.store.claim_tickets(hour, unique, None if expiring else keep_until)
                if not expiring:
                    self._expiring = {h for h in self._expiring if h > hour - 4} | {hour}
            except StoreError as e:
                log.warning(
                    "cannot claim %d LLM records in Redis (%s): not counted", len(unique), e
                )
                new = [False] * len(unique)
            first.update(zip(unique, new, strict=True))
        out = []
        for record in records:
            out.append(first.get(record.nonce, False))
            first[record.nonce] = False  # (the same nonce twice in one batch: once)
        return out


class Claims:
    """Claims records' nonces in batches on a thread of its own, then runs what each record
    waits for (`then(first)`): at most one batch every CLAIM_EVERY seconds, the first record
    after a quiet spell at once (so a lone request is settled before its client's next)."""

    def __init__(self, tickets: Tickets) -> None:
        self.tickets = tickets
        self._pending: list[tuple[Verified, Callable[[bool], None]]] = []
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._last = -CLAIM_EVERY
        self._outstanding = 0  # records added whose `then` has not run yet

    def add(self, record: Verified, then: Callable[[bool], None]) -> None:
        """Claim `record` soon, then call `then(first)` (on the claims thread)."""
        with self._wake:
            if self._stopping:
                then(False)  # (stopping: not counted, its reservation stays)
                return
            self._pending.append((record, then))
            self._outstanding += 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="claims", daemon=True)
                self._thread.start()
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._pending and not self._stopping:
                    self._wake.wait()
                if not self._pending:
                    return
                deadline = self._last + CLAIM_EVERY  # (records that come meanwhile join)
                while not self._stopping and (wait := deadline - time.monotonic()) > 0:
                    self._wake.wait(wait)
                batch, self._pending = self._pending, []
            self._last = time.monotonic()
            self.flush(batch)

    def flush(self, batch: list[tuple[Verified, Callable[[bool], None]]]) -> None:
        """Claim `batch` now and run each record's `then`."""
        try:
            answers = self.tickets.claim([record for record, _ in batch])
        except Exception:  # (a reply Redis garbled, a bug: these are not counted, the thread
            # and the records after them go on)
            log.exception("claiming %d LLM records failed: not counted", len(batch))
            answers = [False] * len(batch)
        for (_, then), first in zip(batch, answers, strict=True):
            try:
                then(first)
            except Exception:  # (one record's counting never stops the others')
                log.exception("counting an LLM record failed")
        with self._wake:
            self._outstanding -= len(batch)
            self._wake.notify_all()

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every record added so far has been claimed and counted."""
        with self._wake:
            return self._wake.wait_for(lambda: self._outstanding <= 0, timeout)

    def stop(self) -> None:
        """Claim what is queued, then stop the thread."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=10)
