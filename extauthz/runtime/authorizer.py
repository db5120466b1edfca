"""The authorizer: the pure decision wired to the live policy snapshot and the token store.

It holds the current PolicySnapshot (swapped atomically by the PolicyWatcher thread when the
sync job publishes a new version, see policy_watcher.py), looks token records up through the
token cache, remembers repeated decisions, counts failed authentications per client address
and logs decisions (sampled).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from extauthz.core.bounded import BoundedDict, text_size
from extauthz.core.decision import (
    ADDRESS_NOT_ALLOWED,
    NO_HEADERS,
    Decision,
    Outcome,
    RequestFacts,
    TeamLookup,
    TokenLookup,
    auth_disabled,
    decide,
    shown_request_id,
    unavailable,
)
from extauthz.core.limits import REFUSALS
from extauthz.core.policy import EMPTY_SNAPSHOT, PolicySnapshot
from extauthz.core.token_record import TokenRecord
from extauthz.errors import TooManyFailures, shown
from extauthz.runtime.auth_failures import FailureLimiter
from extauthz.runtime.envoy_check import client_of, llm_request_of
from extauthz.runtime.jwks import JwksCache
from extauthz.runtime.jwt_verifier import JwtVerifier
from extauthz.runtime.limiter import METADATA_KEY as TOKEN_LIMITS_KEY
from extauthz.runtime.limiter import Limiter
from extauthz.runtime.logs import LogSampler
from extauthz.runtime.metrics import Metrics, count_value
from extauthz.runtime.tickets import TICKET_KEY, Tickets
from extauthz.runtime.usage import UsageMeter
from extauthz.storage.store import PolicyVersion, Store
from extauthz.storage.token_cache import TokenCache

log = logging.getLogger("extauthz.decision")
# the hot path's constants, bound once (an enum member's `.value` is a Python-level lookup)
_ALLOW = Outcome.ALLOW
_LABELS = {outcome: outcome.value for outcome in Outcome}  # denials only: a member hashes in Python
_perf_counter = time.perf_counter
_debug_enabled = log.isEnabledFor
_DEBUG = logging.DEBUG
watch_log = logging.getLogger("extauthz.policy")
_LIMITED = REFUSALS  # refusals counted as rate-limited
_ADDRESS_NOT_ALLOWED = ADDRESS_NOT_ALLOWED

MEMO_TTL = 1.0  # seconds a remembered decision lives at most (beyond that: decided afresh)
MEMO_MAX_ENTRIES = 10_000
MEMO_MAX_BYTES = 16 << 20
# Client-sent x-extauthz-* header names are part of the facts; requests sending more (or
# longer) ones than this are decided afresh rather than kept as memo keys.
MEMO_MAX_SENT_HEADERS = 4
MEMO_MAX_SENT_LENGTH = 256


class Authorizer:
    """Decides requests with the current policy snapshot and the token store."""

    def __init__(
        self,
        store: Store,
        jwks: JwksCache | None = None,
        cache: TokenCache | None = None,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
        disable_auth: bool = False,
        failures: FailureLimiter | None = None,
        limiter: Limiter | None = None,
        usage: UsageMeter | None = None,
        tickets: Tickets | None = None,
    ) -> None:
        """`failures`: failed authentications per client address (429 past its limit);
        `limiter`: counts the limits an allow carries, requests and LLM tokens (None: they
        are not enforced); `usage`: meters tokens' allowed and rate-limited requests (None:
        off); `tickets`: signs what an LLM allow hands to the counting of its response
        (None: unsigned, as in tests of the decision alone)."""
        self.store = store
        self.failures = failures
        self.limiter = limiter
        self.tickets = tickets
        self.usage = usage
        self.metrics = metrics
        self.disable_auth = disable_auth
        self.cache = cache
        self.lookup: TokenLookup = cache if cache is not None else store.token_record
        self.teams: TeamLookup = cache.team if cache is not None else store.team_record
        self.jwks = jwks
        self.verify_jwt = JwtVerifier(jwks) if jwks is not None else None
        self.clock = clock
        self.snapshot: PolicySnapshot | None = None  # replaced whole, never mutated
        self.policy_version: PolicyVersion | None = None
        # facts → (decision, cache epoch, snapshot, valid until): see _decide
        self._memo: BoundedDict[RequestFacts, tuple[Decision, int, PolicySnapshot | None, float]]
        self._memo = BoundedDict(MEMO_MAX_ENTRIES, MEMO_MAX_BYTES)
        # decisions answered from the memo: next() on a C counter, atomic under the GIL
        self._reused = itertools.count()
        self.log_sampler = LogSampler()

    def decide(
        self, facts: RequestFacts, headers: Mapping[str, str] = NO_HEADERS, peer: Any = None
    ) -> Decision:
        """Decide one request; `headers` are the request's, whose x-request-id (Envoy's)
        goes into its log line when one is written. `peer`: Envoy's attributes, where the
        client's address and network are read when something needs them (the server's
        facts leave them out, see envoy_check.check_input_reader); None: the facts hold
        them."""
        started = _perf_counter()
        now = self.clock()
        if facts.target is not None:  # --route-identity match: the policy names the route
            facts = self._matched(facts)
        snapshot = self.snapshot
        route = facts.route
        if self.disable_auth:
            decision = auth_disabled(facts)
        else:
            if peer is not None and snapshot is not None and route in snapshot.peer_routes:
                # (one lookup on the warm path: the rare routes read more of the request)
                if route in snapshot.llm_routes:  # the body's model is part of the facts
                    facts = facts._replace(llm=llm_request_of(peer))
                if route in snapshot.address_routes:
                    address, network = client_of(peer)
                    facts = facts._replace(source_address=address, network=network)
                    peer = None
            decision = self._decide(facts, now, snapshot, peer)
            if decision.reason == _ADDRESS_NOT_ALLOWED and peer is not None:
                facts, decision = self._with_address(facts, now, snapshot, peer)
        if decision.limits and self.limiter is not None:  # every time, also when remembered
            decision = self.limiter.admit(decision, now)
        if decision.model is not None and self.tickets is not None:  # (LLM routes only)
            decision = self._signed(decision)
        outcome = decision.outcome
        if decision.token_id is not None and self.usage is not None:
            if outcome is _ALLOW:
                self.usage.count(decision.token_id, True, now, decision.model)
            elif decision.reason in _LIMITED:
                self.usage.count(decision.token_id, False, now)
        failures = self.failures
        if failures is not None and decision.status == 401 and decision.reason != "no_credential":
            failures.failed(client_of(peer)[0] if peer is not None else facts.source_address)
        metrics = self.metrics
        if metrics is not None:
            # a name the policy does not know is "-": a label per name sent would let
            # clients grow the metrics without bound
            if not route or snapshot is None or route not in snapshot.routes:
                route = "-"
            label = "allow" if outcome is _ALLOW else _LABELS[outcome]
            metrics.decision(route, label, decision.reason, _perf_counter() - started)
            if decision.model is not None:
                metrics.llm_request(route, decision.model)
            if outcome is not _ALLOW:
                if decision.reason == "store_unavailable":
                    metrics.redis_errors.inc()
                elif decision.reason in _LIMITED:
                    metrics.rate_limited.labels(route).inc()
        if outcome is not _ALLOW or _debug_enabled(_DEBUG):
            self._log(facts, decision, headers.get("x-request-id", ""))
        return decision

    def _signed(self, decision: Decision) -> Decision:
        """An LLM allow with its ticket (runtime/tickets.py); while the key cannot be read,
        one under a token limit is refused (its reservation could not be settled) and any
        other goes unsigned (its usage is not counted)."""
        if decision.outcome is not _ALLOW or self.tickets is None:
            return decision
        fields = dict(decision.metadata)
        reserved = fields.get(TOKEN_LIMITS_KEY, "")
        ticket = self.tickets.sign(
            fields.get("token_id", ""), fields.get("route", ""), decision.model or "", reserved
        )
        if ticket is None:
            return unavailable("token_limit_unavailable") if reserved else decision
        return replace(decision, metadata=(*decision.metadata, (TICKET_KEY, ticket)))

    @property
    def reused(self) -> int:
        """Decisions answered from the memo so far."""
        return count_value(self._reused)

    def _matched(self, facts: RequestFacts) -> RequestFacts:
        """The facts with the route the policy's match rules name for their host and path
        (None: nothing matched, or the path is not canonical → 404)."""
        snapshot = self.snapshot
        host, path = facts.target or ("", "")
        route = snapshot.matcher.resolve(host, path) if snapshot is not None else None
        return facts._replace(route=route, target=None)

    def _log(self, facts: RequestFacts, decision: Decision, request_id: str) -> None:
        """One line per decision (allows at debug), sampled per outcome and reason."""
        level = logging.DEBUG
        if decision.outcome is not Outcome.ALLOW:
            level = logging.WARNING if decision.outcome is Outcome.ERROR else logging.INFO
        if not log.isEnabledFor(level):
            return
        suppressed = self.log_sampler.admit(f"{decision.outcome.value}/{decision.reason}")
        if suppressed is None:
            return
        request_id = shown_request_id(request_id)
        route = facts.route
        if route is not None and (len(route) > 128 or not route.isprintable()):
            route = shown(route, 128)  # a route name sent straight to the Check port
        fields = {
            "outcome": decision.outcome.value,
            "route": route,
            "status": decision.status,
            "reason": decision.reason,
            "subject": decision.subject,
            "request_id": request_id or None,
        }
        if suppressed:
            fields["suppressed_before"] = suppressed
        log.log(
            level,
            "%s route=%s status=%d reason=%s subject=%s request_id=%s%s",
            decision.outcome.value,
            route,
            decision.status,
            decision.reason,
            decision.subject or "-",
            request_id or "-",
            f" (+{suppressed} like it suppressed)" if suppressed else "",
            extra={"fields": fields},
        )

    def log_suppressed(self) -> None:
        """Report the decision lines the sampler dropped since the last report (if any)."""
        dropped = self.log_sampler.drain()
        if dropped:
            log.info(
                "suppressed %d repeated decision log lines (%s)",
                sum(dropped.values()),
                ", ".join(f"{kind}={n}" for kind, n in sorted(dropped.items())),
                extra={"fields": {"suppressed": dropped}},
            )

    def _decide(
        self, facts: RequestFacts, now: float, snapshot: PolicySnapshot | None, peer: Any
    ) -> Decision:
        """decide(), remembered: a repeated request (same token, route and headers; same
        address where the route's decision depends on it) reuses the decision while the
        policy snapshot is the same object, the token cache's epoch has not moved (no
        invalidation, still trusted) and the decision's own time is not up. A client over
        its failure limit is answered from the cache only, when it is not remembered.
        """
        # None: not remembered (lookups would go to Redis and nothing may be skipped)
        epoch = self.cache.current_epoch if self.cache is not None else None
        sent = facts.identity_headers_sent
        if sent and (
            len(sent) > MEMO_MAX_SENT_HEADERS or sum(map(len, sent)) > MEMO_MAX_SENT_LENGTH
        ):
            epoch = None  # too large a key to keep
        if epoch is not None:
            hit = self._memo.get(facts)
            if hit is not None and hit[1] == epoch and hit[2] is snapshot and now < hit[3]:
                next(self._reused)
                return hit[0]
        lookup = self.lookup
        if self.failures is not None:
            address = client_of(peer)[0] if peer is not None else facts.source_address
            wait = self.failures.retry_after(address)
            if wait is not None:
                lookup = self._cache_only(wait)
        decision = decide(facts, snapshot, lookup, now, self.verify_jwt, self.teams)
        if epoch is not None and decision.reusable_until is not None:
            until = min(decision.reusable_until, now + MEMO_TTL)
            size = text_size((facts.route, facts.authorization, facts.source_address, *sent))
            self._memo.put(facts, (decision, epoch, snapshot, until), size)
        return decision

    def _with_address(
        self, facts: RequestFacts, now: float, snapshot: PolicySnapshot | None, peer: Any
    ) -> tuple[RequestFacts, Decision]:
        """A token bound to networks (`allowed_cidrs`) was decided without the client's
        address (not read on most routes: "" is in no network): read it, decide again. Both
        answers are remembered, each under its own facts: the one without the address is
        always this 403, the one with it is for that address only."""
        address, network = client_of(peer)
        facts = facts._replace(source_address=address, network=network)
        return facts, self._decide(facts, now, snapshot, None)

    def _cache_only(self, retry_after: float) -> TokenLookup:
        """The lookup for a client over its failure limit: what the cache knows, else 429."""
        cache = self.cache

        def lookup(digest: str) -> TokenRecord | None:
            if cache is not None:
                found, record = cache.cached(digest)
                if found:
                    return record  # type: ignore[no-any-return]
            raise TooManyFailures(retry_after)

        return lookup

    def refresh_policy(self) -> bool:
        """Load the published policy if its version changed; True when it was replaced.

        Raises StoreUnavailable or MalformedRecord; the current snapshot is kept then.
        """
        version = self.store.policy_version()
        if version is None:
            if self.snapshot is None:
                # Nothing published yet: an empty policy (every route unknown → 404).
                self.snapshot = EMPTY_SNAPSHOT
                watch_log.warning("no policy published in Redis yet: every route answers 404")
                return True
            return False
        if version == self.policy_version and self.snapshot is not None:
            return False
        snapshot = self.store.load_policy()
        if snapshot is None:
            return False
        if self.jwks is not None:
            self.jwks.track(r.jwt for r in snapshot.routes.values() if r.jwt is not None)
        self.snapshot = snapshot
        self.policy_version = version
        watch_log.info(
            "policy version %d loaded (%d routes)", version.version, len(snapshot.routes)
        )
        return True
