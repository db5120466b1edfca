"""Usage flushes against a real redis-server with a tight Redis timeout (docs/policy.md#usage):
a flush of 100,000 (token, day) pairs is written whole and exactly once."""

from __future__ import annotations

import time

import pytest

from extauthz.runtime.usage import UsageMeter
from extauthz.storage.store import open_store, utc_date
from tests.support.procs import RedisServer

pytestmark = pytest.mark.redis


def test_a_flush_of_100k_pairs_is_written_once(redis_server: RedisServer) -> None:
    # a tighter timeout than `serve`'s 0.1 s: one round trip for all 100k would not fit
    store = open_store(redis_server.url, "extauthz:", 0.02)
    now = time.time()
    meter = UsageMeter(store)
    for i in range(100_000):
        meter.count(f"t{i}", True, now)
    started = time.monotonic()
    flushed = [meter.flush()]
    while not flushed[-1] and time.monotonic() - started < 30:  # (a slow batch: retried)
        flushed.append(meter.flush())
    assert flushed[-1], flushed
    day = f"extauthz:usage:{utc_date(int(now // 86400))}"
    reader = open_store(redis_server.url, "extauthz:", 10.0)  # (reading 100k fields: not 20 ms)
    assert int(redis_server.cli("HLEN", day)) == 100_000
    assert set(reader.client.hvals(day)) == {"1"}  # every pair once, none twice
    assert meter.flush() is True and set(reader.client.hvals(day)) == {"1"}
    store.close()
    reader.close()
