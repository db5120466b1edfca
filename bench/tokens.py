"""Token commands at scale: the real CLI against a real redis-server holding N tokens.

For each size N (default 10^3 and 10^6) it loads N token records and their index entries
with pipelines (what `token create` writes, without the CLI's per-token round trips), then
times the real `extauthz token ...` commands as subprocesses (the median of --repeat runs:
show, update, rotate, revoke by id, and `list --limit 100`), and the peak memory (RSS) of a
full `list --json` and `export`. It also times `token import` of --import-size tokens.
Ratios are against the smallest size, measured in the same run.

    python bench/tokens.py [--sizes 1000 1000000] [--import-size 100000] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import redis  # noqa: E402

from bench.private_redis import private_redis  # noqa: E402
from extauthz.core.credentials import token_hash  # noqa: E402

BATCH = 10_000
BY_ID = ("show", "update", "rotate", "revoke")


def load(client: redis.Redis, count: int, now: int) -> None:
    """`count` tokens as `token create` writes them (hash record, id entry, creation order)."""
    client.flushall()
    for start in range(0, count, BATCH):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(start + BATCH, count)):
            token_id = f"t{i:07}"
            digest = token_hash(f"eat_bench_{i}")
            pipe.hset(
                f"extauthz:token:{digest}",
                mapping={
                    "id": token_id,
                    "routes": f"route-{i % 100}",
                    "scopes": "inference",
                    "created_at": str(now),
                },
            )
            pipe.hset(f"extauthz:token-id:{token_id}", "sha256", digest)
            pipe.zadd("extauthz:token-ids", {token_id: i + 1})
        pipe.execute()
    client.set("extauthz:token-seq", count)


def cli(url: str, *args: str) -> float:
    """Seconds one `extauthz ...` run takes (start to exit), output discarded."""
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "extauthz", *args, "--redis-url", url],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        check=True,
    )
    return time.perf_counter() - started


def peak_rss_mb(url: str, *args: str) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one `extauthz ...` run, measured in a fresh parent so
    that no earlier child's peak counts."""
    code = (
        "import resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        "subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, check=True)\n"
        "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    argv = [sys.executable, "-m", "extauthz", *args, "--redis-url", url]
    out = subprocess.run(
        [sys.executable, "-c", code, *argv], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    return float(out[0]), int(out[1]) / 1024


def measure(url: str, client: redis.Redis, size: int, repeat: int) -> dict[str, Any]:
    """The figures at one size."""
    load(client, size, int(time.time()))
    picks = [f"t{(size * (k + 1)) // (repeat + 2):07}" for k in range(repeat)]
    row: dict[str, Any] = {"size": size}
    row["show"] = statistics.median(cli(url, "token", "show", i) for i in picks)
    row["update"] = statistics.median(
        cli(url, "token", "update", i, "--name", "renamed") for i in picks
    )
    row["rotate"] = statistics.median(cli(url, "token", "rotate", i) for i in picks)
    row["revoke"] = statistics.median(cli(url, "token", "revoke", i) for i in picks)
    row["list_limit_100"] = statistics.median(
        cli(url, "token", "list", "--limit", "100") for _ in range(repeat)
    )
    row["list_json_seconds"], row["list_json_peak_mb"] = peak_rss_mb(url, "token", "list", "--json")
    row["export_seconds"], row["export_peak_mb"] = peak_rss_mb(url, "token", "export")
    row["redis_mb"] = int(client.info("memory")["used_memory"]) / 2**20
    return row


def import_figure(url: str, client: redis.Redis, count: int, work: Path) -> dict[str, float]:
    client.flushall()
    path = work / "import.jsonl"
    with open(path, "w") as f:
        for i in range(count):
            line = {"id": f"i{i:07}", "routes": ["m"], "scopes": ["inference"]}
            f.write(json.dumps({**line, "token": secrets.token_urlsafe(24)}) + "\n")
    command = ("token", "import", str(path), "--allow-unknown-route")  # (no policy synced)
    seconds, peak = peak_rss_mb(url, *command)
    again, _ = peak_rss_mb(url, *command)  # all unchanged
    assert int(client.zcard("extauthz:token-ids")) == count
    return {"count": count, "seconds": seconds, "peak_mb": peak, "again_seconds": again}


def render(data: dict[str, Any]) -> str:
    rows, base = data["sizes"], data["sizes"][0]
    lines = ["| command | " + " | ".join(f"{r['size']:,} tokens" for r in rows) + " | ratio |"]
    lines.append("|---" * (len(rows) + 2) + "|")
    for key in (*BY_ID, "list_limit_100", "list_json_seconds", "export_seconds"):
        cells = " | ".join(f"{r[key]:.2f} s" for r in rows)
        lines.append(f"| {key} | {cells} | {rows[-1][key] / base[key]:.2f} |")
    for key in ("list_json_peak_mb", "export_peak_mb", "redis_mb"):
        cells = " | ".join(f"{r[key]:.0f} MB" for r in rows)
        lines.append(f"| {key} | {cells} | |")
    imp = data["import"]
    lines.append(
        f"\nimport of {imp['count']:,} tokens: {imp['seconds']:.1f} s (peak {imp['peak_mb']:.0f} MB);"
        f" the same file again (nothing to write): {imp['again_seconds']:.1f} s"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 1_000_000])
    parser.add_argument("--import-size", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    with private_redis("extauthz-tokens-") as (port, tmp):
        url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis(port=port)
        os.environ.pop("EXTAUTHZ_REDIS_URL", None)
        data = {
            "sizes": [measure(url, client, n, args.repeat) for n in sorted(args.sizes)],
            "import": import_figure(url, client, args.import_size, tmp),
            "machine": {"cpus": os.cpu_count(), "maxrss_unit": "KiB"},
        }
    print(render(data))
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=2))


if __name__ == "__main__":
    main()
