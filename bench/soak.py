"""Soak: the local stack under steady load with a mix of credentials, and policy syncs.

    python bench/soak.py [--minutes 10] [--json FILE]

Starts the real stack (Redis, extauthz, Envoy, demo model), measures saturation briefly with
wrk, then sends requests at half that rate for `--minutes` from client threads that know the
expected answer of every request: valid tokens (200), revoked and unknown tokens and no
credential (401), a token of another deployment (403), a private route from outside (404).
A policy sync runs every 30 s (alternating two files with the same outcomes). Reports the
RSS of every process at start and end, non-designed outcomes and mismatches; exits 1 if RSS
grew 10 % or more or if any request got an answer it should not have.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.run import ensure_tools, process_tree  # noqa: E402
from extauthz.admin import tokens  # noqa: E402
from extauthz.admin.sync import sync  # noqa: E402
from extauthz.config import Settings  # noqa: E402
from extauthz.core.credentials import new_token  # noqa: E402
from extauthz.core.policy import load_policy_file  # noqa: E402
from extauthz.dev.stack import Stack, free_base_port  # noqa: E402

DESIGNED = {200, 401, 403, 404}
# Envoy's own 503 (status_on_error, empty body) when the Check call took longer than its
# 0.25 s timeout: fail closed, as designed, but a sign of a stalled server; a few are
# tolerated on a machine starved of CPU (at most this share of the requests), more fail.
MAX_TIMEOUT_SHARE = 0.005
SYNC_EVERY = 30.0


def rss_kib(pid: int) -> int:
    """Resident set size of a process and its descendants, KiB."""
    total = 0
    for p in process_tree(pid):
        try:
            match = re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{p}/status").read_text())
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += int(match.group(1)) if match else 0
    return total


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument(
        "--sync-every", type=float, default=SYNC_EVERY, help="seconds between policy syncs"
    )
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    ensure_tools()
    with tempfile.TemporaryDirectory(prefix="extauthz-soak-") as tmp:
        work = Path(tmp)
        # one address plays every client, revoked and unknown tokens included: no failure limit
        stack = Stack(
            free_base_port(),
            work / "stack",
            REPO / "examples/policy.yaml",
            settings=Settings(auth_failure_burst=0),
        )
        stack.start()
        try:
            result = soak(stack, work, args.minutes, args.sync_every)
        finally:
            stack.stop()
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    raise SystemExit(0 if result["ok"] else 1)


def soak(
    stack: Stack, work: Path, minutes: float, sync_every: float = SYNC_EVERY
) -> dict[str, Any]:
    store = stack.store()
    now = time.time()
    valid = [tokens.create(store, ["deployment-a"], now=now).token for _ in range(3)]
    revoked = []
    for _ in range(2):
        issued = tokens.create(store, ["deployment-a"], now=now)
        tokens.revoke(store, issued.record.id)
        revoked.append(issued.token)
    other = tokens.create(store, ["deployment-b"], now=now).token
    cases: list[tuple[str, dict[str, str], int]] = [
        *(("/deployments/a/predict", {"authorization": f"Bearer {t}"}, 200) for t in valid),
        *(("/deployments/a/predict", {"authorization": f"Bearer {t}"}, 401) for t in revoked),
        ("/deployments/a/predict", {"authorization": f"Bearer {new_token()}"}, 401),
        ("/deployments/a/predict", {}, 401),
        ("/deployments/a/predict", {"authorization": f"Bearer {other}"}, 403),
        ("/embedder/embed", {"authorization": f"Bearer {valid[0]}"}, 404),
    ]
    port = stack.ports.external.port

    # saturation of this mix, briefly, with wrk on the allowed path (the heaviest)
    out = subprocess.run(
        ["wrk", "-t1", "-c16", "-d5s", "-H", f"authorization: Bearer {valid[0]}", f"http://127.0.0.1:{port}/deployments/a/predict"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    saturation = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    target = saturation / 2

    # a second policy file with the same outcomes, to alternate on every sync
    policy_a = load_policy_file(str(stack.policy))
    alt = work / "policy-alt.yaml"
    alt.write_text(
        stack.policy.read_text().replace(
            "  healthz:\n", "  soak-extra:\n    access: public\n  healthz:\n", 1
        )
    )
    policy_b = load_policy_file(str(alt))
    secret_env = {"DENSENET161_SECRET": stack.basic_secret}

    pids = {c.name: c.proc.pid for c in stack.children if c.proc is not None}
    time.sleep(1)
    rss_start = {name: rss_kib(pid) for name, pid in pids.items()}
    counts = {"requests": 0, "mismatches": 0, "non_designed": 0, "errors": 0, "timeouts": 0}
    examples: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + minutes * 60
    threads_n = 4
    interval = threads_n / target

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        next_at = time.monotonic()
        while time.monotonic() < deadline:
            path, headers, expected = random.choice(cases)
            body = b""
            try:
                conn.request("POST", path, body=b"{}", headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                status = resp.status
            except (OSError, http.client.HTTPException) as e:
                status = -1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                with lock:
                    if len(examples) < 5:
                        examples.append(f"{path}: {type(e).__name__}")
            timed_out = status == 503 and not body  # Envoy's own: the Check call timed out
            with lock:
                counts["requests"] += 1
                if timed_out:
                    counts["timeouts"] += 1
                elif status == -1:
                    counts["errors"] += 1
                elif status not in DESIGNED:
                    counts["non_designed"] += 1
                if status != expected and not timed_out:
                    counts["mismatches"] += 1
                    if len(examples) < 5:
                        examples.append(f"{path} expected {expected} got {status}")
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_at = time.monotonic()

    workers = [threading.Thread(target=client, daemon=True) for _ in range(threads_n)]
    started = time.monotonic()
    for w in workers:
        w.start()
    syncs = 0
    while time.monotonic() < deadline:
        time.sleep(min(sync_every, max(0.0, deadline - time.monotonic())))
        if time.monotonic() < deadline:
            sync(store, policy_b if syncs % 2 == 0 else policy_a, prune=True, env=secret_env)
            syncs += 1
    for w in workers:
        w.join()
    elapsed = time.monotonic() - started
    rss_end = {name: rss_kib(pid) for name, pid in pids.items()}
    growth = {name: (rss_end[name] - rss_start[name]) / max(rss_start[name], 1) for name in pids}
    ok = (
        counts["timeouts"] <= MAX_TIMEOUT_SHARE * counts["requests"]
        and counts["mismatches"] == 0
        and counts["non_designed"] == 0
        and counts["errors"] == 0
        and all(g < 0.10 for g in growth.values())
    )
    return {
        "minutes": minutes,
        "saturation_rps": round(saturation),
        "target_rps": round(target),
        "achieved_rps": round(counts["requests"] / elapsed),
        "policy_syncs": syncs,
        **counts,
        "examples": examples,
        "rss_kib_start": rss_start,
        "rss_kib_end": rss_end,
        "rss_growth": {k: round(v, 4) for k, v in growth.items()},
        "ok": ok,
    }


if __name__ == "__main__":
    main()
