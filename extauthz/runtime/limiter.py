"""Limits counted across every process sharing one Redis, from leased budgets: one limiter
for every kind and scope of core/limits.py (docs/architecture.md#where-things-go; what it
promises: docs/design.md#limits).

Each counter has one Redis key per window, `{prefix}<kind>:<scope>:<unit><window>`: what
processes have taken from the window. A process leases a budget (one INCRBY that never
leaves the key past N: what was over is given back at once) and admits requests from it in
memory. Admission is all-or-nothing: an allow needs room in every counter it carries (1 for
a request, its bound for an LLM request: core/llm.py `LlmRequest.bound`), or it takes from
none and is refused with the 429 of the first that had none.

LLM token reservations are settled when the response ends (`settle`, from the access-log
record or ext_proc, possibly in another process): the reservation goes back into that
process's budget and the real usage is taken from it; usage beyond the reservation is a
debt of the window in which the response ended. A response whose usage cannot be read is
never settled: its whole reservation stays taken. `sync` (every policy poll) pays debts
into Redis and gives unused budgets back for others to lease where the window is full or
this process has not leased from it lately (settlements that arrived here for allows
another process made).

Guarantee: what is taken from Redis never exceeds N (a lease is only what is left), so the
requests admitted in a window never exceed N, and neither do the tokens of admitted requests
while the model server keeps to the caps it was sent (docs/llm.md#what-a-limit-promises).
While a budget lasts, admission and settlement make no Redis call: a lease covers about
`Kind.lease_seconds` of what this process sees, at most 1/`Kind.max_lease_share` of N beyond
the request's need. When Redis cannot answer, admission fails closed (503) unless
`--rate-limit-on-error allow`.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from extauthz.core.bounded import ENTRY_OVERHEAD, BoundedDict
from extauthz.core.budget import Budget
from extauthz.core.decision import Decision, limit_reached, unavailable
from extauthz.core.limits import MONEY, TOKENS, Kind, Limited, Window, counter
from extauthz.core.llm_usage import Usage
from extauthz.core.prices import Price, usd_text
from extauthz.core.token_limit import TokenLimit
from extauthz.errors import StoreError
from extauthz.storage.store import Store

log = logging.getLogger("extauthz.limits")

RECHECK_FULL = 0.25  # seconds before a full window's counter is asked again
IDLE_GIVE_BACK = 2.0  # seconds without a lease after which a budget's units go back
MAX_LEASES = 4  # leases one admission may ask for per counter
WARN_EVERY = 60.0  # seconds between warnings that Redis did not take a sync
RETRY_AFTER_ERROR = 1.0  # seconds before Redis is asked again for a counter it failed
MAX_BUDGETS = 100_000
MAX_BUDGET_BYTES = 32 << 20
LIMIT_HEADER = "x-ratelimit-limit-tokens"  # (OpenAI's names: clients know them)
REMAINING_HEADER = "x-ratelimit-remaining-tokens"
BUDGET_HEADER = "x-extauthz-budget-remaining"  # USD left of the tightest budget that applied
METADATA_KEY = "token_limits"  # dynamic metadata: what settle needs, as JSON
_NO_ROOM = "no room"
_LEASE = "lease"  # (what memory cannot answer: Redis is asked)


@dataclass
class _Budget:
    """This process's share of one counter in one window."""

    counter: str  # the Redis counter, after the key prefix: "<kind>:<scope>:<unit><window>"
    limit: Window
    ends: float  # the window's first second after it
    starts: float = 0.0  # and its first
    held: int = 0  # leased, not taken; below zero: a debt to pay into Redis
    seen: int = 0  # the window's total in Redis at the last lease
    full: bool = False  # Redis had less than asked at the last lease
    full_until: float = 0.0  # (then not asked again before this)
    failed_until: float = 0.0
    rate: float = 0.0  # units a second this process takes (moving average of its leases)
    leased: int = 0  # units of the last lease
    leased_at: float = 0.0
    expiring: bool = False  # a lease of this process set the counter's expiry
    # held while this process writes the counter (a lease, a budget given back, a debt
    # paid): a lease asked meanwhile waits for the write, never counts a give-back twice
    writing: threading.Lock = field(default_factory=threading.Lock, repr=False)


def _from_memory(budget: _Budget, need: int, now: float) -> _Budget | str | None:
    """`need` units taken from what `budget` holds (the budget); _NO_ROOM while its window
    is known full, None while Redis is known failing; else _LEASE. Under the lock."""
    if budget.held >= need:
        budget.held -= need
        return budget
    if now < budget.full_until:
        return _NO_ROOM
    if now < budget.failed_until:
        return None
    return _LEASE


class Limiter:
    """Admits allows against every limit they carry; settles what LLM responses used."""

    def __init__(
        self,
        store: Store,
        on_error: str = "deny",
        on_total: Callable[[Limited, int, float], None] | None = None,
    ) -> None:
        self.store = store
        # after each lease: the limit, the window's total in Redis, the window's end (alerts)
        self.on_total = on_total
        self.allow_on_error = on_error == "allow"
        self._budgets: BoundedDict[str, _Budget] = BoundedDict(MAX_BUDGETS, MAX_BUDGET_BYTES)
        # lease → its budget in the window last asked for: the warm path's one lookup
        self._current: BoundedDict[str, _Budget] = BoundedDict(MAX_BUDGETS, MAX_BUDGET_BYTES)
        # lease → the rate of its last window (a new window starts at that rate)
        self._rates: BoundedDict[str, float] = BoundedDict(MAX_BUDGETS, MAX_BUDGET_BYTES)
        self._lock = threading.Lock()
        self._warned_at = -WARN_EVERY

    # --- admission (Check) ----------------------------------------------------------------

    def admit(self, decision: Decision, now: float) -> Decision:
        """`decision` when every limit it carries has room (what settle needs as metadata,
        the tokens remaining as response headers); else the 429 of the first that has none
        (nothing taken from the others), or a 503 when Redis cannot count."""
        reserve = decision.reserve
        taken: list[tuple[_Budget, int]] = []
        settled = False
        lock, current = self._lock, self._current.get
        for limited in decision.limits:
            need = 1
            if limited.kind.settled:
                need = reserve if limited.kind is TOKENS else decision.cost
                settled = True
            budget = current(limited.lease)
            if budget is not None and budget.starts <= now < budget.ends:
                with lock:  # (the warm path: units held in memory)
                    if budget.held >= need:
                        budget.held -= need
                        taken.append((budget, need))
                        continue
            answer = self._take(limited, need, now)
            if isinstance(answer, _Budget):
                taken.append((answer, need))
                continue
            if answer is None and self.allow_on_error:
                continue  # (Redis cannot count: let through uncounted, as documented)
            self._give_back(taken)
            if answer is None:
                return unavailable(limited.kind.unavailable)
            _, starts, ends = limited.limit.window(now)
            return limit_reached(limited, ends - now, ends - starts, decision)
        if not settled:
            return decision
        tokens = [b for b, _ in taken if b.counter.startswith(_TOKEN_COUNTERS)]
        money = [b for b, _ in taken if b.counter.startswith(_MONEY_COUNTERS)]
        if not tokens and not money:  # (Redis could not count, and on_error is allow)
            return decision
        settle: list[object] = [reserve, [[b.counter, str(b.limit), int(b.ends)] for b in tokens]]
        headers: tuple[tuple[str, str], ...] = ()
        if tokens:
            least, remaining = _tightest(tokens)
            headers = ((LIMIT_HEADER, str(least.limit.count)), (REMAINING_HEADER, str(remaining)))
        if money and decision.price is not None:
            headers += ((BUDGET_HEADER, usd_text(_tightest(money)[1])),)
            settle += [
                decision.cost,
                [[b.counter, str(b.limit), int(b.ends)] for b in money],
                decision.price.to_metadata(),
            ]
        return replace(
            decision,
            metadata=(*decision.metadata, (METADATA_KEY, json.dumps(settle))),
            response_headers=headers,
        )

    def _take(self, limited: Limited, need: int, now: float) -> _Budget | str | None:
        """The budget `need` units were taken from; else _NO_ROOM, or None (Redis failed)."""
        limit = limited.limit
        kind = limited.kind
        for _ in range(MAX_LEASES):  # (settled debts may eat a lease while it is asked for)
            with self._lock:
                budget = self._budget(limited, now)
                if (answer := _from_memory(budget, need, now)) is not _LEASE:
                    return answer
            with budget.writing:  # (what another thread writes to the counter lands first)
                with self._lock:
                    if (answer := _from_memory(budget, need, now)) is not _LEASE:
                        return answer  # (its lease may have brought enough)
                    extra = min(
                        limit.count // kind.max_lease_share,
                        math.ceil(budget.rate * kind.lease_seconds),
                    )
                    want = need - budget.held + extra
                answer = self._lease(limited, budget, need, want, now)
            if answer is not _LEASE:
                return answer
        return _NO_ROOM

    def _lease(
        self, limited: Limited, budget: _Budget, need: int, want: int, now: float
    ) -> _Budget | str | None:
        """Lease `want` units for a request of `need` (under `budget.writing`): the budget,
        _NO_ROOM, None (Redis failed), or _LEASE (ask again: debts ate the lease)."""
        limit = limited.limit
        try:
            granted, total = self.store.take_units(
                budget.counter, want, limit.count, budget.ends, not budget.expiring
            )
        except StoreError:
            with self._lock:
                budget.failed_until = now + RETRY_AFTER_ERROR
            return None
        if self.on_total is not None:  # (what budget.seen is set to below)
            self.on_total(limited, total, budget.ends)
        give = 0
        with self._lock:
            budget.expiring = True  # (later leases of this window are one INCRBY)
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
            return _NO_ROOM
        return _LEASE  # (a debt settled meanwhile took what was leased)

    def _budget(self, limited: Limited, now: float) -> _Budget:
        """The budget of `limited`'s current window. Under the lock."""
        budget = self._current.get(limited.lease)
        if budget is not None and budget.starts <= now < budget.ends:
            return budget
        rate = self._rates.get(limited.lease) or 0.0
        name, ends = counter(limited.kind, limited.scope, limited.limit, now)
        budget = self._kept(name, limited.limit, ends, rate)
        self._current.put(limited.lease, budget, ENTRY_OVERHEAD + 2 * len(limited.lease))
        return budget

    def _kept(self, name: str, limit: Window, ends: float, rate: float = 0.0) -> _Budget:
        """This process's budget of counter `name` (made when new, starting at `rate`).
        Under the lock."""
        key = f"{name}|{limit}"
        budget = self._budgets.get(key)
        if budget is None:
            starts = limit.window(ends - 1)[1]
            budget = _Budget(name, limit, ends, starts, rate=rate)
            self._budgets.put(key, budget, ENTRY_OVERHEAD + 4 * len(key))
        return budget

    def _give_back(self, taken: list[tuple[_Budget, int]]) -> None:
        with self._lock:
            for budget, need in taken:
                budget.held += need

    # --- settlement (the access-log record, or ext_proc) ----------------------------------

    def settle(self, metadata: str, used: Usage | None, now: float) -> None:
        """A response ended at `now` having used `used`: its reservations (ext_authz's
        `token_limits` metadata, from any process: tokens, and micro-dollars at the prices
        it names) go back, what it used is taken; what it used beyond a reservation is owed
        by the window `now` falls in. None: what it used is not known; the reservations
        stay taken."""
        if used is None:
            return
        try:
            groups = _reservations(metadata, used)
        except (ValueError, TypeError, OverflowError, RecursionError, IndexError):
            log.warning("token_limits metadata unreadable: the usage is not settled")
            return
        with self._lock:
            for kind, need, spent, entries in groups:
                for name, limit, ends in entries:
                    self._kept(name, limit, ends).held += max(0, need - spent)
                    if spent > need:  # (to the window the response ended in, not its first)
                        scope = name.removeprefix(f"{kind.prefix}:").rpartition(":")[0]
                        ended, ended_at = counter(kind, scope, limit, now)
                        self._kept(ended, limit, ended_at).held -= spent - need

    # --- sync (every policy poll) ---------------------------------------------------------

    def sync(self, now: float, final: bool = False) -> None:
        """Pay debts into Redis; in full windows (all of them when `final`: the process
        stops) give unused budgets back; forget ended windows (an ended window's unused
        budget is not given back: nobody can use it). What Redis does not take stays for
        the next sync (a warning at most once a minute)."""
        due: list[_Budget] = []
        with self._lock:
            for name, budget in self._budgets.items():
                if _payment(budget, now, final):
                    due.append(budget)
                elif now >= budget.ends and budget.held >= 0:
                    self._budgets.pop(name)
        failed = 0
        for budget in due:
            with budget.writing:  # (a lease asked meanwhile waits: never counts it twice)
                with self._lock:
                    units = _payment(budget, now, final)
                    budget.held += units
                if units and not self._pay(budget.counter, units, budget.ends):
                    failed += 1
                    with self._lock:
                        budget.held -= units  # (a debt again, or a budget held again)
        if failed and now - self._warned_at >= WARN_EVERY:
            self._warned_at = now
            log.warning(
                "cannot write %d limit counters to Redis: kept for the next sync%s",
                failed,
                " (stopping: their debts are lost)" if final else "",
            )

    def _pay(self, name: str, units: int, ends: float) -> bool:
        try:
            self.store.add_units(name, units, ends)
        except StoreError:
            return False
        return True


_TOKEN_COUNTERS = f"{TOKENS.prefix}:"  # the counters whose reservations are settled
_MONEY_COUNTERS = f"{MONEY.prefix}:"
MAX_WINDOW_END = 253_402_300_800.0  # 10000-01-01: no window ends later
_Entries = list[tuple[str, Window, float]]


def _payment(budget: _Budget, now: float, final: bool) -> int:
    """What a sync writes to `budget`'s counter now: its debt, or (negative) what it holds
    when its window was found full, it was not leased lately (it holds what responses
    settled here gave back, their Check ran in another process: others may need it) or
    the process stops; else 0. Under the lock."""
    idle = now - budget.leased_at > IDLE_GIVE_BACK
    if budget.held < 0 or (
        budget.held > 0 and now < budget.ends and (final or budget.full or idle)
    ):
        return -budget.held
    return 0


def _tightest(budgets: list[_Budget]) -> tuple[_Budget, int]:
    """The budget with the least left, and what is left of it (never above its limit)."""
    least = min(budgets, key=lambda b: b.limit.count - b.seen + b.held)
    # (held may include settled reservations the last lease's total does not show)
    return least, min(least.limit.count, max(0, least.limit.count - least.seen + least.held))


def _reservations(metadata: str, used: Usage) -> list[tuple[Kind, int, int, _Entries]]:
    """What settle metadata reserved, per kind: (kind, reserved, what `used` takes, its
    counters): `[tokens, [counter...]]`, then for budgets `micro-dollars, [counter...],
    price`; else ValueError."""
    parsed = json.loads(metadata)
    if not isinstance(parsed, list) or len(parsed) not in (2, 5):
        raise ValueError(metadata)
    tokens = used.prompt_tokens + used.completion_tokens
    groups = [(TOKENS, _need(parsed[0]), tokens, [_entry(TOKENS, *c) for c in parsed[1]])]
    if len(parsed) == 5:
        price = Price.from_metadata(parsed[4])
        cost = price.cost(used.prompt_tokens, used.completion_tokens, used.cached_tokens)
        groups.append((MONEY, _need(parsed[2]), cost, [_entry(MONEY, *c) for c in parsed[3]]))
    for _, need, _, entries in groups:
        if entries and need > min(limit.count for _, limit, _ in entries):
            raise ValueError(need)
    return groups


def _need(value: object) -> int:
    if type(value) is not int or value < 0:
        raise ValueError(value)
    return value


def _entry(kind: Kind, name: object, limit: object, ends: object) -> tuple[str, Window, float]:
    """A counter named in settle metadata: a counter of `kind` (tokens or money), its limit
    and the end of the window its name says; else ValueError."""
    if not isinstance(name, str) or not name.startswith(f"{kind.prefix}:") or "|" in name:
        raise ValueError(name)
    parsed: Window = (Budget if kind is MONEY else TokenLimit).parse(str(limit))
    end = float(int(str(ends)))
    if not 0 < end < MAX_WINDOW_END or parsed.window(end - 1)[2] != end:
        raise ValueError(ends)
    index, _, _ = parsed.window(end - 1)
    if not name.endswith(f":{parsed.unit}{index}"):
        raise ValueError(name)
    return name, parsed, end
