"""Alerts sent as Standard Webhooks (docs/webhooks.md): an in-memory outbox any thread adds
to, and a sender thread that queues its events in Redis and delivers what is due, at least
once, in every process started with `--webhook-url`.

`emit(type, event_id, data)` only appends to a deque (the Check path may call it); the
sender thread, about once a second and at once when woken:
  1. queues the outbox's events in Redis (storage/webhook_queue.py), each event id once
     across every process and restart (a `seen` marker set with the event in one
     transaction): a restart loses nothing that reached Redis;
  2. delivers the events that are due, oldest first: claims one (SET NX PX, so two processes
     do not send it at the same moment, and a killed sender's claim expires), POSTs it
     signed (core/webhooks.py), and on a 2xx deletes it; otherwise retries it 1 s, 2 s, 4 s...
     up to 1 h later, for a day from its first attempt, then drops it (a warning and
     `extauthz_webhooks_dropped_total{reason="expired"}`);
  3. runs its periodic tasks (runtime/alerts.py: the scan for expiring tokens).
A POST that has no answer in `timeout` seconds is a failed attempt. The secret never
reaches a log; the URL is logged by its host only (it may carry a token).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from extauthz.core import webhooks as wh
from extauthz.core.durations import parse_duration
from extauthz.errors import ConfigError, StoreError
from extauthz.files import describe, read_regular_file
from extauthz.storage.store import Store
from extauthz.storage.webhook_queue import QueuedEvent, WebhookQueue

log = logging.getLogger("extauthz.webhooks")

MAX_SECRET_FILE_BYTES = 4096
MAX_OUTBOX = 10_000  # events emitted, not yet in Redis; more are dropped (and counted)
BATCH = 100  # events queued per transaction, and attempted per round
POLL = 1.0  # seconds between rounds when nothing wakes the sender
TIMEOUT = 10.0  # seconds for one POST (connect, send, first byte of the answer)
CLAIM_MS = 60_000  # a claim outlives the longest attempt
KEEP_SEEN = 2 * 86400  # seconds an event id stays queued-once by default
WARN_EVERY = 60.0  # seconds between warnings that Redis did not take the outbox
MAX_ANSWER_BYTES = 64 << 10  # of a receiver's answer read (then the connection is closed)

Task = Callable[[float], None]


@dataclass(frozen=True)
class WebhookConfig:
    """Where alerts go and how they are signed (`--webhook-url`, `--webhook-secret-file`),
    and how long before its expiry a token is announced (`--expiry-warning`, seconds)."""

    url: str = field(repr=False)  # (may carry a token of the receiver's)
    key: bytes = field(repr=False)
    expiry_warning: int = 7 * 86400

    @property
    def host(self) -> str:
        """What logs name: the URL's host and port."""
        return urllib.parse.urlsplit(self.url).netloc.rpartition("@")[2]


def webhook_config(settings: Any) -> WebhookConfig | None:
    """The webhook settings, checked (None without `--webhook-url`); ConfigError with one
    line for a bad URL or duration, or a secret file that is missing, unreadable, empty or
    not `whsec_<base64>` (the message never quotes the file's content)."""
    url, path = settings.webhook_url, settings.webhook_secret_file
    try:
        warning = parse_duration(settings.expiry_warning)
    except ValueError as e:
        raise ConfigError(f"--expiry-warning {settings.expiry_warning!r}: {e}") from None
    if not url:
        if path:
            raise ConfigError("--webhook-secret-file needs --webhook-url (where alerts go)")
        return None
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or not url.isprintable():
        raise ConfigError("--webhook-url: expected an http:// or https:// URL with a host")
    if not path:
        raise ConfigError("--webhook-url needs --webhook-secret-file (the signing secret)")
    try:
        raw = read_regular_file(path, MAX_SECRET_FILE_BYTES)
    except OSError as e:
        raise ConfigError(f"cannot read --webhook-secret-file {path}: {describe(e)}") from e
    try:
        key = wh.parse_secret(raw.decode("ascii"))
    except UnicodeDecodeError:
        raise ConfigError(
            f"--webhook-secret-file {path} is not ASCII text: {wh.WHSEC_RULE}"
        ) from None
    except ValueError as e:
        raise ConfigError(f"--webhook-secret-file {path}: {e}") from None
    return WebhookConfig(url, key, warning)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is a failed attempt: the signed body goes only where it was configured."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class Webhooks:
    """The outbox and the sender of one process (see the module docstring)."""

    def __init__(
        self,
        config: WebhookConfig,
        store: Store,
        clock: Callable[[], float] = time.time,
        poll: float = POLL,
        timeout: float = TIMEOUT,
        claim_ms: int = CLAIM_MS,
    ) -> None:
        self.config = config
        self.queue = WebhookQueue(store)
        self.clock = clock
        self.poll = poll
        self.timeout = timeout
        self.claim_ms = claim_ms
        self.sender = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.tasks: list[Task] = []  # run by the sender thread after each round
        self._outbox: deque[tuple[str, str, Mapping[str, Any], float, int]] = deque()
        self._opener = urllib.request.build_opener(_NoRedirect())
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned_at = -WARN_EVERY
        self.sent = 0
        self.failed = 0  # attempts
        self.dropped: dict[str, int] = {"expired": 0, "outbox_full": 0, "not_json": 0}
        self.queued = 0  # events this process put in Redis
        self.queue_length = 0  # events in Redis at the last look

    # --- any thread -----------------------------------------------------------------------

    def emit(
        self, kind: str, event_id: str, data: Mapping[str, Any], keep_until: float | None = None
    ) -> bool:
        """Send event `kind` (`budget.threshold`, `token.expiring`, `token.leaked`...) once:
        `event_id` names it, stable (the same event always has the same id: it is queued
        once across every process, and is the `webhook-id`); `data` is its JSON `data`
        (never a secret); `keep_until`: until when (unix seconds) the same id could come
        again and must be ignored (default: two days). An append to memory, never blocks;
        False when the outbox is full (the event is counted as dropped)."""
        now = self.clock()
        if len(self._outbox) >= MAX_OUTBOX:
            self.dropped["outbox_full"] += 1
            return False
        until = int(keep_until) if keep_until is not None else int(now) + KEEP_SEEN
        self._outbox.append((kind, event_id, data, now, max(until, int(now) + 60)))
        self._wake.set()
        return True

    # --- the sender thread ----------------------------------------------------------------

    def start(self) -> None:
        """Start the sender thread (a daemon: `stop` ends it)."""
        self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)
        self._thread.start()
        log.info("sending alerts to %s (Standard Webhooks)", self.config.host)

    def stop(self, timeout: float = 5.0) -> None:
        """End the sender thread, then put what the outbox still holds in Redis."""
        self._stopping.set()
        self._wake.set()
        if self._thread is None:
            self.flush()
        else:  # (it flushes as it ends; one stuck in an attempt does when that ends)
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stopping.is_set():
            self.round()
            self._wake.wait(self.poll)
            self._wake.clear()
        self.flush()

    def round(self) -> None:
        """One round of the sender: queue the outbox, deliver what is due, run the tasks."""
        self.flush()
        try:
            self.deliver()
            self.queue_length = self.queue.length()
        except StoreError as e:
            self._warn(f"webhooks: Redis did not answer ({e}); trying again")
        now = self.clock()
        for task in self.tasks:
            try:
                task(now)
            except StoreError as e:
                self._warn(f"webhooks: a periodic task could not read Redis ({e})")
            except Exception:  # a task's bug must not stop deliveries
                log.exception("webhooks: periodic task failed")

    def flush(self) -> bool:
        """Queue the outbox's events in Redis (each id once, ever); True when it is empty.
        What Redis did not take stays, in order, for the next round."""
        while self._outbox:
            batch = [self._outbox[i] for i in range(min(BATCH, len(self._outbox)))]
            events = []
            for kind, event_id, data, created, until in batch:
                try:
                    body = wh.event_body(kind, created, data)
                except (TypeError, ValueError, RecursionError):
                    self.dropped["not_json"] += 1
                    log.error("webhooks: event %s dropped: its data is not JSON", event_id)
                    continue
                events.append(QueuedEvent(wh.webhook_id(event_id), kind, body, created, until))
            try:
                new = self.queue.enqueue(_unique(events))
            except StoreError as e:
                self._warn(f"webhooks: {len(self._outbox)} events not queued in Redis ({e})")
                return False
            for _ in batch:
                self._outbox.popleft()
            self.queued += sum(new)
        return True

    def deliver(self) -> int:
        """Attempt the events due now (up to BATCH); how many were attempted."""
        attempted = 0
        for webhook_id in self.queue.due(self.clock(), BATCH):
            if self._stopping.is_set():
                break
            event = self.queue.claim(webhook_id, self.sender, self.claim_ms)
            if event is None:
                continue
            first = event.first
            if first is None:
                first = self.queue.first_attempt(webhook_id, self.clock())
            attempted += 1
            failure = self._post(webhook_id, event.body)
            now = self.clock()
            if failure is None:
                self.queue.done(webhook_id)
                self.sent += 1
                continue
            self.failed += 1
            failures = event.failures + 1
            at = wh.next_attempt(first, failures, now)
            if at is None:
                self.queue.done(webhook_id)
                self.dropped["expired"] += 1
                log.warning(
                    "webhook %s (%s) dropped: not delivered to %s in %d attempts over a day "
                    "(last: %s)",
                    webhook_id,
                    event.kind,
                    self.config.host,
                    failures,
                    failure,
                )
            else:
                self.queue.retry(webhook_id, failures, at)
                log.warning(
                    "webhook %s (%s) to %s failed (%s): attempt %d, next in %.0fs",
                    webhook_id,
                    event.kind,
                    self.config.host,
                    failure,
                    failures,
                    at - now,
                )
        return attempted

    def _post(self, webhook_id: str, body: bytes) -> str | None:
        """One attempt: None when the receiver answered 2xx, else what went wrong."""
        headers = wh.signed_headers(self.config.key, webhook_id, int(self.clock()), body)
        request = urllib.request.Request(  # noqa: S310 (http or https: checked at start)
            self.config.url, data=body, headers=headers, method="POST"
        )
        try:
            with self._opener.open(request, timeout=self.timeout) as answer:
                answer.read(MAX_ANSWER_BYTES)
                status = int(answer.status)
        except urllib.error.HTTPError as e:
            status = e.code
            e.close()
        except (OSError, ValueError) as e:  # refused, timed out, TLS, a broken answer
            reason = getattr(e, "reason", None) or e
            return f"{type(e).__name__}: {reason}"[:200]
        return None if 200 <= status < 300 else f"HTTP {status}"

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY:
            self._warned_at = now
            log.warning("%s", message)

    # --- metrics --------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        """Prometheus: register the object on a registry (runtime/metrics.py)."""
        yield CounterMetricFamily(
            "extauthz_webhooks_sent", "Webhook events delivered (a 2xx answer)", value=self.sent
        )
        yield CounterMetricFamily(
            "extauthz_webhooks_failed_attempts",
            "Webhook delivery attempts that failed (retried with backoff)",
            value=self.failed,
        )
        dropped = CounterMetricFamily(
            "extauthz_webhooks_dropped",
            "Webhook events given up: expired (a day of failed attempts), outbox_full (more "
            f"than {MAX_OUTBOX} waiting for Redis), not_json",
            labels=["reason"],
        )
        for reason, n in self.dropped.items():
            dropped.add_metric([reason], n)
        yield dropped
        yield GaugeMetricFamily(
            "extauthz_webhooks_queue_length",
            "Webhook events waiting in Redis (due now or later), at the sender's last look",
            value=self.queue_length,
        )


def _unique(events: list[QueuedEvent]) -> list[QueuedEvent]:
    """The first of each webhook id (an id twice in one transaction would be queued twice)."""
    seen: set[str] = set()
    out = []
    for event in events:
        if event.webhook_id not in seen:
            seen.add(event.webhook_id)
            out.append(event)
    return out


# --- the process's sender: what other modules call ------------------------------------------

_installed: dict[str, Webhooks] = {}


def install(webhooks: Webhooks | None) -> None:
    """Make `webhooks` the one `emit` sends through (None: alerts off)."""
    if webhooks is None:
        _installed.pop("sender", None)
    else:
        _installed["sender"] = webhooks


def emit(
    kind: str, event_id: str, data: Mapping[str, Any], keep_until: float | None = None
) -> bool:
    """`Webhooks.emit` on this process's sender; False when alerts are off (no
    `--webhook-url`) or the outbox is full."""
    webhooks = _installed.get("sender")
    return webhooks.emit(kind, event_id, data, keep_until) if webhooks is not None else False
