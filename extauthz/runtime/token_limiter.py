"""LLM token limits counted across every process sharing one Redis, from leased budgets
(issue #25, design.md §15).

Each counter (`TokenLimited.key`) has one Redis key per window,
`{prefix}tl:<key>:<unit><window>`: the tokens processes have taken from the window. A process
leases a budget (one INCRBY that never takes the key past N) and admits requests from it
in memory: a request reserves its bound (LlmRequest.bound: prompt bytes + output cap x
choices; every request under a limit has one, the decision adds a cap where the body names
none). When its response ends, `settle` (ext_proc, possibly in another process) puts the
reservation back into that process's budget and takes the real usage from it; usage beyond
the reservation is a debt of the window in which the response ended. A response whose
usage cannot be read is never settled: its whole reservation stays taken. `sync` (every
policy poll) pays debts into Redis and, in a window that is full, gives unused budgets back
for others to lease.

Guarantee: tokens taken from Redis never exceed N (a lease is only what is left), so the
tokens of admitted requests never exceed N while the model server keeps to the caps it was
sent (docs/llm.md, "What a limit promises"). Admission and
settlement make no Redis call while a budget lasts: a lease covers about LEASE_SECONDS of
the tokens this process sees, at most 1/MAX_LEASE_SHARE of N beyond the request's need.
When Redis cannot answer, admission fails closed (503) unless `--rate-limit-on-error allow`.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from dataclasses import dataclass, replace

from extauthz.core.bounded import ENTRY_OVERHEAD, BoundedDict
from extauthz.core.decision import Decision, token_limit_reached, unavailable
from extauthz.core.token_limit import TokenLimit, TokenLimited
from extauthz.errors import StoreError
from extauthz.storage.store import Store

log = logging.getLogger("extauthz.limits")

LEASE_SECONDS = 1.0  # a lease lasts about this long at the rate this process sees
MAX_LEASE_SHARE = 20  # beyond a request's need, a lease is at most 1/20 of the limit
RECHECK_FULL = 0.25  # seconds before a full window's counter is asked again
MAX_LEASES = 4  # leases one admission may ask for
WARN_EVERY = 60.0  # seconds between warnings that Redis did not take a sync
RETRY_AFTER_ERROR = 1.0
MAX_BUDGETS = 100_000
MAX_BUDGET_BYTES = 32 << 20
LIMIT_HEADER = "x-ratelimit-limit-tokens"  # (OpenAI's names: clients know them)
REMAINING_HEADER = "x-ratelimit-remaining-tokens"
METADATA_KEY = "token_limits"  # dynamic metadata: what settle needs, as JSON


@dataclass
class _Budget:
    """This process's tokens of one counter in one window."""

    counter: str  # the Redis counter: "<key>:<unit><window>"
    limit: TokenLimit
    ends: float  # the window's first second after it
    held: int = 0  # leased, not reserved; below zero: a debt to pay into Redis
    seen: int = 0  # the window's total in Redis at the last lease
    full: bool = False  # Redis had less than asked at the last lease
    full_until: float = 0.0  # (then not asked again before this)
    failed_until: float = 0.0
    rate: float = 0.0  # tokens a second this process takes (moving average of its leases)
    leased: int = 0  # tokens of the last lease
    leased_at: float = 0.0


class TokenLimiter:
    """Admits LLM requests against their callers' token limits, settles what they used."""

    def __init__(self, store: Store, on_error: str = "deny") -> None:
        self.store = store
        self.allow_on_error = on_error == "allow"
        self._budgets: BoundedDict[str, _Budget] = BoundedDict(MAX_BUDGETS, MAX_BUDGET_BYTES)
        # lease → the rate of its last window (a new window starts at that rate)
        self._rates: BoundedDict[str, float] = BoundedDict(MAX_BUDGETS, MAX_BUDGET_BYTES)
        self._lock = threading.Lock()
        self._warned_at = -WARN_EVERY

    # --- admission (Check) ----------------------------------------------------------------

    def admit(self, decision: Decision, now: float) -> Decision:
        """`decision` with its reservation recorded (metadata for settle, the remaining
        tokens as response headers) when every limit has room; else the 429 of the first
        that has none (its reservations given back), or a 503 when Redis cannot count."""
        need = decision.reserve
        taken: list[_Budget] = []
        for limited in decision.token_limits:
            answer = self._reserve(limited, need, now)
            if isinstance(answer, _Budget):
                taken.append(answer)
                continue
            if answer is None and self.allow_on_error:
                continue  # (Redis cannot count: let through uncounted, as documented)
            self._return(taken, need)
            if answer is None:
                return unavailable("token_limit_unavailable")
            return token_limit_reached(limited, answer, decision)
        if not taken:
            return decision
        least = min(taken, key=lambda b: b.limit.count - b.seen + b.held)
        # (held may include settled reservations the last lease's total does not show)
        remaining = min(least.limit.count, max(0, least.limit.count - least.seen + least.held))
        settle = json.dumps([need, [[b.counter, str(b.limit), int(b.ends)] for b in taken]])
        return replace(
            decision,
            metadata=(*decision.metadata, (METADATA_KEY, settle)),
            response_headers=(
                (LIMIT_HEADER, str(least.limit.count)),
                (REMAINING_HEADER, str(remaining)),
            ),
        )

    def _reserve(self, limited: TokenLimited, need: int, now: float) -> _Budget | float | None:
        """The budget `need` tokens were taken from; else seconds until the window ends
        (no room), or None (Redis failed)."""
        limit = limited.limit
        for _ in range(MAX_LEASES):  # (settled debts may eat a lease while it is asked for)
            with self._lock:
                budget = self._budget(limited, now)
                if budget.held >= need:
                    budget.held -= need
                    return budget
                if now < budget.full_until:
                    return budget.ends - now
                if now < budget.failed_until:
                    return None
                extra = min(limit.count // MAX_LEASE_SHARE, math.ceil(budget.rate * LEASE_SECONDS))
                want = need - budget.held + extra
            try:
                granted, total = self.store.take_tokens(
                    budget.counter, want, limit.count, budget.ends
                )
            except StoreError:
                with self._lock:
                    budget.failed_until = now + RETRY_AFTER_ERROR
                return None
            give = 0
            with self._lock:
                if budget.leased_at:  # what the last lease held has been used since
                    elapsed = max(now - budget.leased_at, 1e-3)
                    budget.rate = 0.5 * budget.rate + 0.5 * budget.leased / elapsed
                    self._rates.put(limited.lease, budget.rate, ENTRY_OVERHEAD + 64)
                budget.leased_at, budget.leased = now, granted
                budget.seen = total
                budget.held += granted
                budget.full = granted < want
                if budget.held >= need:
                    budget.held -= need
                    return budget
                if budget.full:
                    budget.full_until = now + RECHECK_FULL
                    if budget.held > 0:  # a piece too small for this request: others may use it
                        give, budget.held = budget.held, 0
            if give or budget.full:
                if give and not self._pay(budget.counter, -give, budget.ends):
                    with self._lock:
                        budget.held += give  # (given back at a sync)
                return budget.ends - now
        return budget.ends - now

    def _budget(self, limited: TokenLimited, now: float) -> _Budget:
        """The budget of `limited`'s current window. Under the lock."""
        rate = self._rates.get(limited.lease) or 0.0
        return self._kept(*_counter(limited.key, limited.limit, now), rate)

    def _kept(self, counter: str, limit: TokenLimit, ends: float, rate: float = 0.0) -> _Budget:
        """This process's budget of `counter` (made when new, starting at `rate`). Under the
        lock."""
        name = f"{counter}|{limit}"
        budget = self._budgets.get(name)
        if budget is None:
            budget = _Budget(counter, limit, ends, rate=rate)
            self._budgets.put(name, budget, ENTRY_OVERHEAD + 4 * len(name))
        return budget

    def _return(self, taken: list[_Budget], need: int) -> None:
        with self._lock:
            for budget in taken:
                budget.held += need

    # --- settlement (ext_proc) ------------------------------------------------------------

    def settle(self, metadata: str, used: int | None, now: float) -> None:
        """A response ended at `now` having used `used` tokens: its reservation (ext_authz's
        `token_limits` metadata, from any process) goes back, `used` is taken; what it used
        beyond the reservation is owed by the window `now` falls in. None: what it used is
        not known; the reservation stays taken."""
        if used is None:
            return
        try:
            need, counters = json.loads(metadata)
            entries = [(str(c), TokenLimit.parse(str(lim)), int(e)) for c, lim, e in counters]
            need = int(need)
        except (ValueError, TypeError, OverflowError, RecursionError):
            log.warning("token_limits metadata unreadable: the usage is not settled")
            return
        with self._lock:
            for counter, limit, ends in entries:
                self._kept(counter, limit, float(ends)).held += max(0, need - used)
                if used > need:  # (to the window the response ended in, not the one it began)
                    ended = _counter(counter.rpartition(":")[0], limit, now)
                    self._kept(*ended).held -= used - need

    # --- sync (every policy poll) ---------------------------------------------------------

    def sync(self, now: float, final: bool = False) -> None:
        """Pay debts into Redis; in full windows (all of them when `final`: the process
        stops) give unused budgets back; forget ended windows (an ended window's unused
        budget is not given back: nobody can use it). What Redis does not take stays for
        the next sync (a warning at most once a minute)."""
        payments: list[tuple[_Budget, int]] = []
        with self._lock:
            for name, budget in self._budgets.items():
                full = final or budget.full
                if budget.held < 0 or (budget.held > 0 and now < budget.ends and full):
                    payments.append((budget, -budget.held))
                    budget.held = 0
                elif now >= budget.ends and budget.held >= 0:
                    self._budgets.pop(name)
        failed = [(b, tokens) for b, tokens in payments if not self._pay(b.counter, tokens, b.ends)]
        if failed:
            with self._lock:
                for budget, tokens in failed:
                    budget.held -= tokens  # (a debt again, or a budget held again)
            if now - self._warned_at >= WARN_EVERY:
                self._warned_at = now
                log.warning(
                    "cannot write %d token-limit counters to Redis: kept for the next sync%s",
                    len(failed),
                    " (stopping: their debts are lost)" if final else "",
                )

    def _pay(self, counter: str, tokens: int, ends: float) -> bool:
        try:
            self.store.add_tokens(counter, tokens, ends)
        except StoreError:
            return False
        return True


def _counter(key: str, limit: TokenLimit, now: float) -> tuple[str, TokenLimit, float]:
    """The Redis counter of `key` under `limit` in the window `now` falls in
    ("<key>:<unit><window>"), the limit, and the window's end."""
    window, _, ends = limit.window(now)
    return f"{key}:{limit.unit}{window}", limit, ends
