"""Redis memory per token, per active token and UTC day, and per model
(docs/operating.md#sizing), measured on a private redis-server with the project's own code.

It syncs examples/policy.yaml, then:
1. creates N tokens with `extauthz.admin.tokens.create` (what `token create` and the API
   run: the record with its expiry, the id index entry, the creation order, an audit event)
   and reads `INFO memory` before and after, and `MEMORY USAGE` of each kind of key;
2. counts one request of each token on one UTC day with the server's `UsageMeter` and
   flushes it as a server does (the day's hash, last-used times, batch markers);
   and again on the next day;
3. counts, for 1 and then M models, one LLM request and one response's tokens of each token
   (`UsageMeter.count(..., model=)` and `.charge`) and flushes again.

Token and usage-day figures are Redis's `used_memory` growth divided by what was added (no
persistence, one database, the default key prefix), so they include Redis's key table and
expiry entries. The LLM figures are `MEMORY USAGE` of one token's hashes, and what `used_memory` grew by
beyond that per key over both LLM flushes (one flush alone is dominated by whether Redis
happened to double its key table during it). Redis stores
small hashes compactly (listpacks) and large ones as hash tables, so per-item costs depend on
N a little: compare `--tokens 10000` with `--tokens 100000`.

    python bench/sizing.py [--tokens 10000] [--models 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import redis  # noqa: E402

from bench.private_redis import private_redis  # noqa: E402
from extauthz.admin import tokens  # noqa: E402
from extauthz.admin.sync import sync  # noqa: E402
from extauthz.core.llm_usage import Usage  # noqa: E402
from extauthz.core.policy import load_policy_file  # noqa: E402
from extauthz.core.rate_limit import RateLimit  # noqa: E402
from extauthz.core.token_limit import TokenLimit  # noqa: E402
from extauthz.runtime.usage import UsageMeter  # noqa: E402
from extauthz.storage.store import open_store  # noqa: E402

FLUSH_EVERY = 10_000  # tokens counted between flushes


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def memory_usage(client: redis.Redis, key: str) -> int:
    return int(client.memory_usage(key, samples=0) or 0)


def measure(url: str, client: redis.Redis, count: int, models: int) -> dict[str, Any]:
    client.flushall()
    store = open_store(url, "extauthz:", 5.0)
    sync(
        store,
        load_policy_file(str(REPO / "examples/policy.yaml")),
        env={"DENSENET161_SECRET": "x" * 32},
    )
    now = time.time()
    before = used_memory(client)
    ids = []
    started = time.monotonic()
    for i in range(count):
        issued = tokens.create(
            store, ["densenet161"], ["inference"], 30 * 86400, f"ci-{i}", now, actor="cli:bench"
        )
        ids.append(issued.record.id)
    created_in = time.monotonic() - started
    after_tokens = used_memory(client)
    sample = issued.record.id
    digest = client.hget(f"extauthz:token-id:{sample}", "sha256").decode()  # type: ignore[union-attr]
    llm = tokens.create(
        store,
        ["llm"],
        ["inference"],
        30 * 86400,
        "llm client",
        now,
        actor="cli:bench",
        rate_limit=RateLimit.parse("600/m"),
        models=["demo-small", "qwen2-*"],
        token_limit=TokenLimit.parse("100000/d"),
    )
    llm_digest = client.hget(f"extauthz:token-id:{llm.record.id}", "sha256").decode()  # type: ignore[union-attr]
    audit_len = int(client.xlen("extauthz:audit"))
    audit_bytes = memory_usage(client, "extauthz:audit")
    keys = {
        "token record (extauthz:token:<sha256>)": memory_usage(client, f"extauthz:token:{digest}"),
        "the same with rate_limit, models, token_limit": memory_usage(
            client, f"extauthz:token:{llm_digest}"
        ),
        "id index entry (extauthz:token-id:<id>)": memory_usage(
            client, f"extauthz:token-id:{sample}"
        ),
        "creation order (extauthz:token-ids), per token": memory_usage(client, "extauthz:token-ids")
        // (count + 1),
        "audit event (extauthz:audit), per event": audit_bytes // max(audit_len, 1),
    }

    def flush(day: int, models: list[str]) -> int:
        """used_memory added by one request of every token on UTC `day` (each of `models`:
        an LLM request and its response's tokens), flushed as a server flushes."""
        at = day * 86400 + 3600.0
        meter = UsageMeter(store, flush_every=3600, retention_days=90, clock=lambda: at)
        base = used_memory(client)
        for i, token_id in enumerate(ids):
            if not models:
                meter.count(token_id, True, at)
            for model in models:
                meter.count(token_id, True, at, model=model)
                meter.charge(token_id, model, at, used)
            if i % FLUSH_EVERY == FLUSH_EVERY - 1:
                assert meter.flush()  # (a meter holds at most 100,000 counts between flushes)
        assert meter.flush() and not meter.dropped
        return used_memory(client) - base

    used = Usage(prompt_tokens=120, completion_tokens=480, cached_tokens=64, reasoning_tokens=32)
    day = int(now // 86400)
    first_day = flush(day, [])  # the day's hash, and every token's first last-used entry
    next_day = flush(day + 1, [])  # the next day's hash; last-used entries are updated
    names = [f"model-{m}" for m in range(models)]
    # LLM: a requests hash and a tokens hash per token and day; used_memory grows in steps
    # (Redis doubles its key table), so only the two flushes together are divided up
    llm_growth = flush(day, names[:1]) + flush(day + 1, names)

    def llm_bytes(on: int) -> int:
        """MEMORY USAGE of one token's two LLM hashes of a day (key, value, its entry in the
        key table; not its expiry entry nor the table's slot, ~40 B more a key)."""
        date = time.strftime("%Y-%m-%d", time.gmtime(on * 86400))
        return sum(
            memory_usage(client, f"extauthz:usage:{date}:{kind}:{sample}")
            for kind in ("models", "tokens")
        )

    return {
        "tokens": count,
        "models": models,
        "create_seconds": round(created_in, 1),
        "per_token": (after_tokens - before) // count,
        "per_token_first_day": first_day // count,
        "per_token_day": next_day // count,
        "llm_token_day_one_model": llm_bytes(day),
        "llm_token_day_all_models": llm_bytes(day + 1),
        # what each of those 4 keys costs beyond MEMORY USAGE (expiry entry, key table)
        "llm_key_overhead": round((llm_growth / count - llm_bytes(day) - llm_bytes(day + 1)) / 4),
        "used_memory_total": used_memory(client),
        "keys": keys,
        "audit_events": audit_len,
    }


def render(data: dict[str, Any]) -> str:
    lines = [
        f"redis {data['redis_version']}, {data['tokens']} tokens "
        f"(created in {data['create_seconds']} s), {data['models']} models",
        f"per token (record, index, order, audit event): {data['per_token']} B",
        f"per token used on a UTC day: {data['per_token_day']} B "
        f"(its first day: {data['per_token_first_day']} B, with its last-used entry)",
        f"a token's LLM use on a UTC day (MEMORY USAGE of its 2 hashes): "
        f"{data['llm_token_day_one_model']} B with 1 model, "
        f"{data['llm_token_day_all_models']} B with {data['models']}; "
        f"used_memory adds {data['llm_key_overhead']} B a key (expiry, key table)",
        f"used_memory at the end: {data['used_memory_total'] / 2**20:.1f} MiB",
        "MEMORY USAGE of one key (bytes):",
    ]
    for name, value in data["keys"].items():
        lines.append(f"  {value:6d}  {name}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=10_000)
    parser.add_argument("--models", type=int, default=3)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    with private_redis("extauthz-sizing-") as (port, _):
        client = redis.Redis(port=port)
        os.environ.pop("EXTAUTHZ_REDIS_URL", None)
        data = measure(f"redis://127.0.0.1:{port}/0", client, args.tokens, args.models)
        data["redis_version"] = client.info("server")["redis_version"]
    print(render(data))
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=2))


if __name__ == "__main__":
    main()
