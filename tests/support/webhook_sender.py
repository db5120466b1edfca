"""A process that sends webhooks and nothing else, for the test that kills one mid-queue:
`python -m tests.support.webhook_sender REDIS_URL WEBHOOK_URL SECRET_FILE COUNT` emits COUNT
events (`test.event:<i>`, the same ids on every start) and delivers until killed."""

from __future__ import annotations

import sys
import threading

from extauthz.config import load_settings
from extauthz.runtime.webhooks import Webhooks, webhook_config
from extauthz.storage.store import open_store

CLAIM_MS = 1500  # (the real one is a minute: a test need not wait that long)


def main() -> None:
    redis_url, url, secret_file, count = sys.argv[1:5]
    settings = load_settings({"webhook_url": url, "webhook_secret_file": secret_file}, env={})
    config = webhook_config(settings)
    assert config is not None
    webhooks = Webhooks(
        config, open_store(redis_url, "extauthz:", 5.0), poll=0.1, claim_ms=CLAIM_MS
    )
    for i in range(int(count)):
        webhooks.emit("test.event", f"test.event:{i}", {"n": i})
    webhooks.start()
    threading.Event().wait()


if __name__ == "__main__":
    main()
