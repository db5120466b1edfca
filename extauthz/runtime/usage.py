"""Usage metering: per token and UTC day, allowed and rate-limited requests, and when each
token was last used; counted in memory, written to Redis in pipelined batches.

The decision path only adds to a dict (under a lock). `flush` swaps the counts out and
writes them in batches of at most 1,000 (token, day) pairs, each one MULTI/EXEC with a
marker so that it is added exactly once (HINCRBY into the day's hash), then ZADD GT for last
used: at most every `--usage-flush` seconds (default 10), from the policy watcher's thread,
and once more when the server stops (SIGTERM loses nothing). A batch Redis did not answer is
kept as it was for the next flush, which first asks whether its marker is there. Nothing
is ever written to a token's own key: that would fire the keyspace
notification that empties every server's cache.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from extauthz.core.llm_usage import Usage
from extauthz.errors import StoreError
from extauthz.storage.store import TOKEN_KINDS, Store

log = logging.getLogger("extauthz.usage")
K = TypeVar("K")
V = TypeVar("V")

DAY = 86400
MAX_PENDING = 100_000  # (token, day) pairs held between flushes; more are counted as dropped
BATCH = 1_000  # pairs per MULTI/EXEC: a round trip of a few ms, well inside the Redis timeout


class UsageMeter:
    """Counts requests per token and day until the next flush."""

    def __init__(
        self,
        store: Store,
        flush_every: float = 10.0,
        retention_days: int = 90,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.flush_every = flush_every
        self.retention_days = retention_days
        self.clock = clock
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, int], list[int]] = {}  # (token id, day) → [allowed, limited]
        self._models: dict[tuple[str, int, str], int] = {}  # (token id, day, model) → allowed
        # (token id, day, model) → [prompt, completion, estimated completion] LLM tokens
        self._tokens: dict[tuple[str, int, str], list[int]] = {}
        self._last: dict[str, float] = {}
        self._flushed_at = clock()
        self._pending: list[_Batch] = []  # batches a failed flush did not get written
        self.dropped = 0
        self.refused = 0  # counts Redis refused to add (a key of another type)

    def count(self, token_id: str, allowed: bool, now: float, model: str | None = None) -> None:
        """One request of this token: allowed, or refused by a rate limit; `model`: the LLM
        model it was allowed for (counted per model too)."""
        key = (token_id, int(now // DAY))
        lock = self._lock
        lock.acquire()  # (not `with`: its __enter__/__exit__ lookups double the cost)
        try:
            counts = self._counts.get(key)
            if counts is None:
                if len(self._counts) >= MAX_PENDING:
                    self.dropped += 1
                    return
                counts = self._counts[key] = [0, 0]
            counts[0 if allowed else 1] += 1
            self._last[token_id] = now
            if model is not None and allowed:
                per_model = (token_id, key[1], model)
                if per_model in self._models or len(self._models) < MAX_PENDING:
                    self._models[per_model] = self._models.get(per_model, 0) + 1
        finally:
            lock.release()

    def charge(self, token_id: str, model: str, now: float, used: Usage, cost: int = 0) -> None:
        """LLM tokens a response of this token's used (ext_proc, after the response), and
        what they cost in micro-dollars."""
        key = (token_id, int(now // DAY), model)
        with self._lock:
            counts = self._tokens.get(key)
            if counts is None:
                if len(self._tokens) >= MAX_PENDING:
                    self.dropped += 1
                    return
                counts = self._tokens[key] = [0] * len(TOKEN_KINDS)
            counts[0] += used.prompt_tokens
            counts[2 if used.estimated else 1] += used.completion_tokens
            counts[3] += used.cached_tokens
            counts[4] += used.reasoning_tokens
            counts[5] += cost

    def maybe_flush(self) -> None:
        """Flush if `flush_every` seconds have passed since the last one."""
        if self.clock() - self._flushed_at >= self.flush_every:
            self.flush()

    def flush(self) -> bool:
        """Write what was counted, in batches of at most BATCH pairs, each exactly once
        (Store.add_usage); a batch Redis did not answer is kept, as it was, for the next
        flush. True when everything was written."""
        self._flushed_at = self.clock()
        with self._lock:
            counts, self._counts = self._counts, {}
            models, self._models = self._models, {}
            charged, self._tokens = self._tokens, {}
            last, self._last = self._last, {}
        pending, self._pending = self._pending, []
        batches = (
            pending
            + [_Batch(secrets.token_hex(8), part) for part in _parts(counts)]
            + [_Batch(secrets.token_hex(8), {}, part) for part in _parts(models)]
            + [_Batch(secrets.token_hex(8), {}, {}, part) for part in _parts(charged)]
        )
        for done, batch in enumerate(batches):
            try:
                refused = self.store.add_usage(
                    batch.id,
                    batch.counts,
                    self.retention_days,
                    batch.sent,
                    batch.models,
                    batch.tokens,
                )
            except StoreError as e:
                log.warning("usage not written (kept for the next flush): %s", e)
                self._keep(batches[done:], last)
                return False
            if refused:
                self.refused += refused
                log.warning("usage: Redis refused %d counts (a usage key edited by hand?)", refused)
        parts = _parts(last)  # (100k last-used times in one ZADD outlast any timeout)
        for done, part in enumerate(parts):
            try:
                self.store.raise_last_used(part)
            except StoreError as e:
                log.warning("last-used times not written (kept for the next flush): %s", e)
                self._keep([], {k: v for rest in parts[done:] for k, v in rest.items()})
                return False
        return True

    def _keep(self, batches: list[_Batch], last: dict[str, float]) -> None:
        """Hold what a failed flush did not write: batches as they were (their id finds them
        if they were written after all), at most MAX_PENDING pairs in all."""
        held = 0
        for batch in batches:
            held += len(batch.counts) + len(batch.models) + len(batch.tokens)
            if held > MAX_PENDING:
                self.dropped += sum(sum(c) for c in batch.counts.values())
                self.dropped += sum(batch.models.values())
                continue
            batch.sent = True
            self._pending.append(batch)
        with self._lock:
            for token_id, when in last.items():
                self._last[token_id] = max(when, self._last.get(token_id, 0.0))


def _parts(counts: dict[K, V]) -> list[dict[K, V]]:
    """`counts` in dicts of at most BATCH entries (one MULTI/EXEC each)."""
    items = list(counts.items())
    return [dict(items[i : i + BATCH]) for i in range(0, len(items), BATCH)]


@dataclass
class _Batch:
    """Counts written together with one marker, so a retry never adds them twice."""

    id: str
    counts: dict[tuple[str, int], list[int]]
    models: dict[tuple[str, int, str], int] = field(default_factory=dict)
    tokens: dict[tuple[str, int, str], list[int]] = field(default_factory=dict)
    sent: bool = False  # sent before: it may have been written (check its marker)
