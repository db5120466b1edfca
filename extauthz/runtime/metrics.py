"""Prometheus metrics, served on their own HTTP port (`--metrics-listen`).

On the decision path only two cheap calls happen (a counter child, a histogram); everything
else (cache, JWKS, policy, Redis state) is read at scrape time by a collector.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from extauthz.config import split_address

REDIS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.decisions = Counter(
            "extauthz_decisions",
            "Check decisions by route, outcome (allow/deny/error) and reason",
            ["route", "outcome", "reason"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "extauthz_decision_seconds",
            "Time to decide one Check, excluding gRPC transport",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
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
        self._children: dict[tuple[str, str, str], Any] = {}

    def decision(self, route: str, outcome: str, reason: str, seconds: float) -> None:
        key = (route, outcome, reason)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.decisions.labels(route, outcome, reason)
        child.inc()
        self.latency.observe(seconds)

    def redis_call(self, command: str, seconds: float) -> None:
        self.redis_latency.labels(command).observe(seconds)

    def watch(self, read_state: Callable[[], dict[str, Any]]) -> None:
        """Expose state read at scrape time (see `StateCollector`)."""
        self.registry.register(StateCollector(read_state))

    def serve(self, listen: str) -> None:
        host, port = split_address(listen)
        start_http_server(port, addr=host or "127.0.0.1", registry=self.registry)


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
