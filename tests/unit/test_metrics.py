from __future__ import annotations

import urllib.request
from functools import partial
from typing import Any

from prometheus_client import generate_latest

from extauthz.dev.ports import free_port, wait_port
from extauthz.runtime.metrics import Metrics, merge_expositions

STATE: dict[str, Any] = {
    "policy_version": 7,
    "redis_up": 1,
    "auth_disabled": 0,
    "serving": 1,
    "cache": {"hit": 5, "miss": 2},
    "cache_entries": 3,
    "jwks": {"ok": 1, "error": 4},
}


def _text(metrics: Metrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_decisions_count_by_route_outcome_and_reason() -> None:
    m = Metrics()
    for _ in range(3):
        m.decision("a", "allow", "ok", 0.0002)
    m.decision("a", "deny", "no_credential", 0.0001)
    m.redis_call("hgetall", 0.0005)
    text = _text(m)
    assert 'extauthz_decisions_total{outcome="allow",reason="ok",route="a"} 3.0' in text
    assert 'extauthz_decisions_total{outcome="deny",reason="no_credential",route="a"} 1.0' in text
    assert "extauthz_decision_seconds_count 4.0" in text
    assert 'extauthz_redis_seconds_count{command="hgetall"} 1.0' in text


def test_state_is_read_at_scrape_time() -> None:
    m = Metrics()
    state = dict(STATE)
    m.watch(lambda: state)
    assert "extauthz_policy_version 7.0" in _text(m)
    state["policy_version"] = 8
    state["redis_up"] = 0
    text = _text(m)
    assert "extauthz_policy_version 8.0" in text and "extauthz_redis_up 0.0" in text
    assert 'extauthz_token_cache_events_total{event="hit"} 5.0' in text
    assert 'extauthz_jwks_fetches_total{result="error"} 4.0' in text
    assert "extauthz_token_cache_entries 3.0" in text


def test_served_over_http() -> None:
    m = Metrics()
    m.watch(lambda: STATE)
    port = free_port()
    m.serve(f"127.0.0.1:{port}")
    wait_port(port, timeout=5)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert "extauthz_serving 1.0" in resp.read().decode()


def test_expositions_of_several_workers_add_up() -> None:
    texts = []
    for worker, (version, up, entries) in enumerate([(7, 1, 3), (8, 0, 4)]):
        m = Metrics()
        state = {**STATE, "policy_version": version, "redis_up": up, "cache_entries": entries}
        m.watch(partial(dict, state))
        for _ in range(worker + 1):
            m.decision("a", "allow", "ok", 0.0002)
        m.rate_limited.labels("a").inc(2)
        texts.append(_text(m))
    merged = merge_expositions(texts).decode()
    assert 'extauthz_decisions_total{outcome="allow",reason="ok",route="a"} 3.0' in merged
    assert "extauthz_decision_seconds_count 3.0" in merged
    assert 'extauthz_rate_limited_total{route="a"} 4.0' in merged
    assert 'extauthz_token_cache_events_total{event="hit"} 10.0' in merged
    assert "extauthz_token_cache_entries 7.0" in merged  # summed
    assert "extauthz_policy_version 8.0" in merged  # the newest
    assert "extauthz_redis_up 0.0" in merged  # up only if every worker is
    assert "_created" not in merged


def test_decisions_counted_from_many_threads_add_up_exactly() -> None:
    import threading

    from prometheus_client.parser import text_string_to_metric_families

    m = Metrics()
    times = (0.00004, 0.00005, 0.00007, 0.003, 1.0)  # on a bound, between bounds, above all

    def work(route: str) -> None:
        for i in range(5000):
            m.decision(route, "allow", "granted", times[i % len(times)])

    threads = [threading.Thread(target=work, args=(f"r{i % 2}",)) for i in range(4)]
    scrapes = []
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        scrapes.append(_text(m))  # scraping while counting never fails
    for t in threads:
        t.join()
    families = {f.name: f for f in text_string_to_metric_families(_text(m))}
    decided = {s.labels["route"]: s.value for s in families["extauthz_decisions"].samples}
    assert decided == {"r0": 10000, "r1": 10000}
    buckets = {
        s.labels["le"]: s.value
        for s in families["extauthz_decision_seconds"].samples
        if s.name.endswith("_bucket")
    }
    assert buckets["5e-05"] == 8000  # 0.00004 and 0.00005 (le: at or below)
    assert buckets["0.0001"] == 12000
    assert buckets["0.005"] == 16000 and buckets["0.05"] == 16000
    assert buckets["+Inf"] == 20000
    count = next(
        s for s in families["extauthz_decision_seconds"].samples if s.name.endswith("_count")
    )
    assert count.value == 20000
    # two workers' endpoints add up
    merged = merge_expositions([_text(m), _text(m)]).decode()
    assert 'extauthz_decisions_total{outcome="allow",reason="granted",route="r0"} 20000.0' in merged


def test_the_tls_certificate_s_expiry_and_reloads() -> None:
    """With TLS on the Check port: when the certificate served to new connections expires
    (an alert before it does), and how many renewals were taken in; of several workers, the
    earliest expiry (a worker that did not reload shows)."""
    texts = []
    for expiry, reloads in ((2_000_000_000, 1), (1_900_000_000, 0)):
        m = Metrics()
        m.watch(partial(dict, {**STATE, "tls": {"expiry": expiry, "reloads": reloads}}))
        texts.append(_text(m))
    assert "extauthz_tls_certificate_expiry_timestamp_seconds 2e+09" in texts[0]
    assert "extauthz_tls_reloads_total 1.0" in texts[0]
    merged = merge_expositions(texts).decode()
    assert "extauthz_tls_certificate_expiry_timestamp_seconds 1.9e+09" in merged
    assert "extauthz_tls_reloads_total 1.0" in merged
    assert "extauthz_tls" not in _text(_watching(STATE))  # plaintext: none


def _watching(state: dict[str, Any]) -> Metrics:
    m = Metrics()
    m.watch(lambda: state)
    return m
