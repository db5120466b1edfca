"""The events extauthz sends as webhooks (runtime/webhooks.py; docs/webhooks.md#what-is-sent):

- `budget.threshold`: a budget or token limit (every limit kind whose allows are settled:
  LLM tokens, money) reached 50 %, 80 % or 100 % of its window. The limiter calls
  `BudgetAlerts.on_total` after each lease with the window's total in Redis; a threshold is
  announced once per counter, window and threshold across every process (the event id names
  them: `budget.threshold:<counter>:<percent>`, the counter's name holding its window).
- `token.expiring`: a token expires within `--expiry-warning` (default 7d); one event per
  token and expiry (`token.expiring:<token id>:<expires_at>`), found by a scan of the token
  index (storage/token_index.py, never the keyspace) that one process at a time runs, at
  most once every SCAN_EVERY seconds (a lease key in Redis).
- `token.leaked` is sent by whoever finds the leak: `emit("token.leaked", ...)`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from extauthz.core import webhooks as wh
from extauthz.core.limits import Limited, counter
from extauthz.core.token_record import TokenRecord
from extauthz.runtime.webhooks import Webhooks, install, webhook_config
from extauthz.storage.store import Store
from extauthz.storage.token_index import TokenIndex
from extauthz.storage.webhook_queue import WebhookQueue

log = logging.getLogger("extauthz.alerts")

Emit = Callable[[str, str, Mapping[str, Any], float | None], bool]
MAX_COUNTERS = 100_000  # counters whose announced threshold is remembered (then forgotten)
SCAN_EVERY = 3600  # seconds between scans for expiring tokens (one process per period)
KEEP_AFTER = 86400  # an event's id stays queued-once this long after it can last happen


class BudgetAlerts:
    """`budget.threshold` from the limiter's leases (Limiter(on_total=...))."""

    def __init__(self, emit: Emit) -> None:
        self.emit = emit
        # (lease, window end) → the highest threshold announced: read on every lease, so
        # a process asks Redis about a threshold only once per counter and window
        self._announced: dict[tuple[str, float], int] = {}

    def on_total(self, limited: Limited, total: int, ends: float) -> None:
        """A lease of `limited` saw the window (ending at `ends`) at `total` in Redis:
        announce the thresholds it reached (cheap: a dict lookup when none is new)."""
        if not limited.kind.settled:
            return
        key = (limited.lease, ends)
        above = self._announced.get(key, 0)
        count = limited.limit.count
        if above >= wh.THRESHOLDS[-1] or total * 100 < count * wh.THRESHOLDS[0]:
            return
        reached = wh.thresholds_reached(total, count, above)
        if not reached:
            return
        if len(self._announced) >= MAX_COUNTERS:  # (forgotten ones are deduplicated in Redis)
            self._announced.clear()
        self._announced[key] = reached[-1]
        name, _ = counter(limited.kind, limited.scope, limited.limit, ends - 1)
        for percent in reached:
            self.emit(
                "budget.threshold",
                f"budget.threshold:{name}:{percent}",
                {
                    "kind": limited.kind.name,
                    "scope": limited.scope,
                    "limit": str(limited.limit),
                    "count": count,
                    "threshold": percent,
                    "total": total,
                    "window_end": wh.iso_utc(ends),
                },
                ends + KEEP_AFTER,
            )


class ExpiryScan:
    """`token.expiring`: a task of the sender thread (Webhooks.tasks)."""

    def __init__(
        self, store: Store, emit: Emit, warning: int, holder: str, every: int = SCAN_EVERY
    ) -> None:
        self.index = TokenIndex(store)
        self.queue = WebhookQueue(store)
        self.emit = emit
        self.warning = warning
        self.holder = holder
        self.every = every
        self._next = 0.0

    def __call__(self, now: float) -> None:
        """Scan if this process's turn has come and no other process scanned lately."""
        if now < self._next:
            return
        self._next = now + self.every
        if self.queue.lead(self.holder, self.every):
            log.info("webhooks: %d tokens expiring soon announced", self.scan(now))

    def scan(self, now: float) -> int:
        """Emit `token.expiring` for every indexed token expiring within the warning;
        how many (already announced ones are ignored by the queue)."""
        found = 0
        for token_id, _, record in self.index.stream():
            if not isinstance(record, TokenRecord) or record.expires_at is None:
                continue
            if now < record.expires_at <= now + self.warning:
                found += 1
                self.emit(
                    "token.expiring",
                    f"token.expiring:{token_id}:{record.expires_at}",
                    {
                        "token_id": token_id,
                        "name": record.name,
                        "expires_at": wh.iso_utc(record.expires_at),
                    },
                    record.expires_at + KEEP_AFTER,
                )
        return found


def webhooks_for(settings: Any, store: Store) -> Webhooks | None:
    """This process's sender, with the expiry scan, installed for `emit` (not started:
    `start()` it); None without `--webhook-url`. ConfigError for bad webhook settings."""
    config = webhook_config(settings)
    if config is None:
        return None
    webhooks = Webhooks(config, store)
    webhooks.tasks.append(ExpiryScan(store, webhooks.emit, config.expiry_warning, webhooks.sender))
    install(webhooks)
    return webhooks


def budget_hook(webhooks: Webhooks | None) -> Callable[[Limited, int, float], None] | None:
    """The limiter's `on_total` that sends `budget.threshold` (None: no alerts)."""
    return BudgetAlerts(webhooks.emit).on_total if webhooks is not None else None
