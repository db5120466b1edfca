"""Prometheus metrics, served on their own HTTP port (`--metrics-listen`); with
`--workers N` the supervisor serves there the total of its workers' endpoints.

On the decision path one call happens: `DecisionTally.add`, which counts in the calling
thread's own dict and bucket list (no lock, no prometheus code); the tallies are summed at
scrape time, as is everything else (cache, JWKS, policy, Redis state).
"""

from __future__ import annotations

import itertools
import threading
import urllib.request
from bisect import bisect_left
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.parser import text_string_to_metric_families

from extauthz.config import split_address

MAX_MODEL_LABELS = 100  # distinct model labels per route in extauthz_llm_requests_total
REDIS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05)
_FIRST_BOUND = LATENCY_BUCKETS[0]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.tally = DecisionTally()
        self.registry.register(self.tally)
        self.rate_limited = Counter(
            "extauthz_rate_limited",
            "Requests refused with 429 because a rate limit was used up, by route",
            ["route"],
            registry=self.registry,
        )
        self.redis_errors = Counter(
            "extauthz_redis_errors",
            "Redis commands that failed or timed out",
            registry=self.registry,
        )
        self.redis_latency = Histogram(
            "extauthz_redis_seconds",
            "Redis read latency by command (token lookups on cache misses, policy polls)",
            ["command"],
            buckets=REDIS_BUCKETS,
            registry=self.registry,
        )
        self.llm_requests = Counter(
            "extauthz_llm_requests",
            "LLM requests allowed, by route and model (never by credential; at most "
            f"{MAX_MODEL_LABELS} models a route, the rest as other)",
            ["route", "model"],
            registry=self.registry,
        )
        self._model_labels: dict[str, set[str]] = {}
        self.llm_token_counter = Counter(
            "extauthz_llm_tokens",
            "LLM tokens counted from responses, by route, model and kind (prompt, completion, "
            "estimated_completion: a stream without a usage chunk)",
            ["route", "model", "kind"],
            registry=self.registry,
        )
        self.llm_cost_counter = Counter(
            "extauthz_llm_cost_usd",
            "What counted LLM responses cost in USD at the policy's prices, by route and model "
            "(models without a price are not counted here)",
            ["route", "model"],
            registry=self.registry,
        )
        self.llm_uncounted = Counter(
            "extauthz_llm_uncounted",
            "LLM responses whose tokens were not counted, by reason (no_usage: none or not "
            "believable; too_many_streams: more streams at once than --ext-proc-streams; "
            "unsigned: a record without this deployment's ticket, or 2 h late; "
            "counted_already: sent "
            "again)",
            ["reason"],
            registry=self.registry,
        )
        self.decision = self.tally.add  # (route, outcome, reason, seconds): once per Check
        self.spans_dropped_counter = Counter(
            "extauthz_spans_dropped",
            "Trace spans not exported (--otlp-endpoint), by reason (queue_full: more than "
            "OTEL_BSP_MAX_QUEUE_SIZE (2,048) waiting while the collector is slow or down; "
            "export_failed; span_failed: a bug in making one, the decision answered all the "
            "same)",
            ["reason"],
            registry=self.registry,
        )

    def spans_dropped(self, reason: str, n: int) -> None:
        """Trace spans that were not exported (runtime/tracing.py)."""
        self.spans_dropped_counter.labels(reason).inc(n)

    def llm_tokens(self, route: str, model: str, used: Any, cost: int | None = None) -> None:
        """Tokens one LLM response used (`used`: core.llm_usage.Usage), and what they cost
        in micro-dollars (None: the model has no price)."""
        model = self._model_label(route, model)
        self.llm_token_counter.labels(route, model, "prompt").inc(used.prompt_tokens)
        kind = "estimated_completion" if used.estimated else "completion"
        self.llm_token_counter.labels(route, model, kind).inc(used.completion_tokens)
        if cost is not None:
            self.llm_cost_counter.labels(route, model).inc(cost / 1e6)

    def _model_label(self, route: str, model: str) -> str:
        seen = self._model_labels.setdefault(route, set())
        if model not in seen:
            if len(seen) >= MAX_MODEL_LABELS:
                return "other"
            seen.add(model)
        return model

    def llm_request(self, route: str, model: str) -> None:
        """One allowed LLM request. Model names come from clients (within a route's
        patterns): each route labels at most MAX_MODEL_LABELS of them."""
        self.llm_requests.labels(route, self._model_label(route, model)).inc()

    def redis_call(self, command: str, seconds: float) -> None:
        self.redis_latency.labels(command).observe(seconds)

    def watch(self, read_state: Callable[[], dict[str, Any]]) -> None:
        """Expose state read at scrape time (see `StateCollector`)."""
        self.registry.register(StateCollector(read_state))

    def serve(self, listen: str) -> None:
        host, port = split_address(listen)
        start_http_server(port, addr=host or "127.0.0.1", registry=self.registry)


def count_value(counter: itertools.count[int]) -> int:
    """How far an itertools.count has counted (its next value): read from its repr, the one
    public view of it. Threads count with next(), which is atomic under the GIL."""
    return int(repr(counter)[6:-1])


class _Tally:
    """One thread's counts: written by that thread only, copied whole by the scraper."""

    __slots__ = ("buckets", "counts", "total")

    def __init__(self) -> None:
        # outcome → route → reason → decisions: keys whose hashes the strings keep (a tuple
        # key is hashed anew on every call)
        self.counts: dict[str, dict[str, dict[str, int]]] = {}
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # the last: above every bound
        self.total = 0.0


class DecisionTally:
    """`extauthz_decisions_total{route,outcome,reason}` and `extauthz_decision_seconds`,
    counted per thread without a lock and summed when scraped (a dict or list copy is
    atomic under the GIL, so a scrape never sees half an update of another thread)."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._tallies: list[_Tally] = []
        self._lock = threading.Lock()  # taken once per thread, for its first decision

    def add(self, route: str, outcome: str, reason: str, seconds: float) -> None:
        """Count one decision and its time."""
        try:
            tally: _Tally = self._local.tally
        except AttributeError:
            tally = self._local.tally = _Tally()
            with self._lock:
                self._tallies.append(tally)
        routes = tally.counts.get(outcome)
        if routes is None:
            routes = tally.counts[outcome] = {}
        reasons = routes.get(route)
        if reasons is None:
            reasons = routes[route] = {}
        reasons[reason] = reasons.get(reason, 0) + 1
        # most decisions fall in the first bucket: no search for them
        tally.buckets[0 if seconds <= _FIRST_BOUND else bisect_left(LATENCY_BUCKETS, seconds)] += 1
        tally.total += seconds

    def collect(self) -> Iterator[Metric]:
        counts: dict[tuple[str, str, str], int] = {}
        buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        total = 0.0
        with self._lock:
            tallies = list(self._tallies)
        for tally in tallies:
            for outcome, routes in tally.counts.copy().items():
                for route, reasons in routes.copy().items():
                    for reason, n in reasons.copy().items():
                        key = (route, outcome, reason)
                        counts[key] = counts.get(key, 0) + n
            for i, n in enumerate(list(tally.buckets)):
                buckets[i] += n
            total += tally.total
        decisions = CounterMetricFamily(
            "extauthz_decisions",
            "Check decisions by route, outcome (allow/deny/error) and reason",
            labels=["route", "outcome", "reason"],
        )
        for key, n in sorted(counts.items()):
            decisions.add_metric(list(key), n)
        yield decisions
        cumulative, running = [], 0
        for bound, n in zip((*LATENCY_BUCKETS, float("inf")), buckets, strict=True):
            running += n
            cumulative.append((_le(bound), running))
        yield HistogramMetricFamily(
            "extauthz_decision_seconds",
            "Time to decide one Check, excluding gRPC transport",
            buckets=cumulative,
            sum_value=total,
        )


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class StateCollector:
    """Gauges and counters read from the running server at scrape time."""

    def __init__(self, read_state: Callable[[], dict[str, Any]]) -> None:
        self.read_state = read_state

    def collect(self) -> Iterator[Any]:
        s = self.read_state()
        yield GaugeMetricFamily(
            "extauthz_policy_version", "Loaded policy version", value=s["policy_version"]
        )
        yield GaugeMetricFamily("extauthz_redis_up", "1 while Redis answers", value=s["redis_up"])
        yield GaugeMetricFamily(
            "extauthz_auth_disabled", "1 when --disable-auth is on", value=s["auth_disabled"]
        )
        yield GaugeMetricFamily(
            "extauthz_serving", "1 while health reports SERVING", value=s["serving"]
        )
        cache = CounterMetricFamily(
            "extauthz_token_cache_events", "Token cache events", labels=["event"]
        )
        for event, count in s["cache"].items():
            cache.add_metric([event], count)
        yield cache
        yield GaugeMetricFamily(
            "extauthz_token_cache_entries", "Cached token entries", value=s["cache_entries"]
        )
        jwks = CounterMetricFamily(
            "extauthz_jwks_fetches", "JWKS fetches by result", labels=["result"]
        )
        for result, count in s["jwks"].items():
            jwks.add_metric([result], count)
        yield jwks
        tls = s.get("tls")  # (with TLS on the Check port only)
        if tls is not None:
            yield GaugeMetricFamily(
                "extauthz_tls_certificate_expiry_timestamp_seconds",
                "When the certificate the Check port presents to new connections expires",
                value=tls["expiry"],
            )
            yield CounterMetricFamily(
                "extauthz_tls_reloads",
                "Renewed TLS files taken into service without a restart",
                value=tls["reloads"],
            )


# --- one endpoint for N workers ------------------------------------------------------------

# How a gauge of several workers adds up (counters and histograms are summed).
GAUGE_TOTALS: dict[str, Callable[[float, float], float]] = {
    "extauthz_policy_version": max,
    "extauthz_redis_up": min,
    "extauthz_serving": min,
    "extauthz_auth_disabled": max,
    "extauthz_tls_certificate_expiry_timestamp_seconds": min,  # a worker left behind shows
    "extauthz_webhooks_queue_length": max,  # (one queue in Redis, seen by every worker)
}


def merge_expositions(texts: list[str]) -> bytes:
    """One Prometheus text exposition from several workers': counters, histograms and the
    cache-entry gauge summed per label set, the state gauges by GAUGE_TOTALS."""
    families: dict[str, Metric] = {}
    totals: dict[tuple[str, str, tuple[tuple[str, str], ...]], float] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if family.name.endswith("_created"):
                continue  # per-process creation times do not add up
            families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
            combine = GAUGE_TOTALS.get(family.name, _add) if family.type == "gauge" else _add
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                key = (family.name, sample.name, tuple(sorted(sample.labels.items())))
                totals[key] = combine(totals[key], sample.value) if key in totals else sample.value
    for (family_name, sample_name, labels), value in totals.items():
        families[family_name].add_sample(sample_name, dict(labels), value)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(list(families.values())))
    return bytes(generate_latest(registry))


def _add(a: float, b: float) -> float:
    return a + b


class _Fixed:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def serve_merged(listen: str, worker_addresses: Callable[[], list[str]]) -> Any:
    """Serve /metrics on `listen` as the total of the workers' endpoints (scraped at each
    request, 1 s each; a worker that does not answer is left out and counted in
    `extauthz_workers_unscraped`). Returns the HTTP server (shut it down to stop)."""
    host, port = split_address(listen)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            texts, missing = [], 0
            for address in worker_addresses():
                try:
                    with urllib.request.urlopen(f"http://{address}/metrics", timeout=1) as r:
                        texts.append(r.read().decode())
                except OSError:
                    missing += 1
            body = merge_expositions(texts) + (
                b"# HELP extauthz_workers_unscraped Workers whose metrics did not answer\n"
                b"# TYPE extauthz_workers_unscraped gauge\n"
                b"extauthz_workers_unscraped %d\n" % missing
            )
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((host or "127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
