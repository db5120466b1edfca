"""The floor: extauthz's own server stack (grpcio settings, threads, health, Redis policy
watcher) with a Check handler that returns a fixed OK. Used by bench/run.py.

    python bench/empty_check.py --listen 127.0.0.1:9101 --redis-url redis://... [--reuse-port]
"""

from __future__ import annotations

import argparse
from typing import Any

from extauthz.config import load_settings
from extauthz.core.decision import Decision, Outcome
from extauthz.runtime.envoy_check import CheckRequest, check_response_bytes
from extauthz.runtime.server import Server

OK = check_response_bytes(Decision(Outcome.ALLOW, 200, "bench"))


def empty_check(request: Any, context: Any) -> bytes:
    """Registered as the real handler is (request parsed, bytes out); no reading, no
    decision."""
    return OK


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--reuse-port", action="store_true")
    args = parser.parse_args()
    settings = load_settings(
        {"listen": args.listen, "redis_url": args.redis_url, "metrics_listen": ""}, env={}
    )
    server = Server(settings, args.reuse_port, check=empty_check, read=CheckRequest.FromString)
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: server.request_stop())
    server.start()
    try:
        server.wait()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
