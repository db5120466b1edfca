"""A webhook receiver for tests: a real HTTP server on 127.0.0.1 that verifies every delivery
with the `standardwebhooks` library (as a customer's receiver would) and records it."""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def new_secret(tmp_path: Path) -> tuple[str, Path]:
    """A fresh `whsec_` secret and the file holding it."""
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    path = tmp_path / "webhook-secret"
    path.write_text(secret + "\n")
    return secret, path


@dataclass(frozen=True)
class Delivery:
    webhook_id: str
    timestamp: int
    body: bytes
    status: int  # what the receiver answered

    @property
    def event(self) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(self.body)
        return found


class Receiver:
    """Answers 500 to the first `fail_first` attempts of each webhook id, then 200 (after
    `delay` seconds); a delivery that does not verify is answered 400 and kept in `bad`."""

    def __init__(self, secret: str, fail_first: int = 0, delay: float = 0.0) -> None:
        self.webhook = Webhook(secret)
        self.fail_first = fail_first
        self.delay = delay
        self.lock = threading.Lock()
        self.attempts: list[Delivery] = []
        self.bad: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    receiver.verify(body, headers)
                    status = receiver._status(headers["webhook-id"])
                except (WebhookVerificationError, ValueError, KeyError) as e:
                    with receiver.lock:
                        receiver.bad.append(f"{e!r}: {headers}")
                    status = 400
                if status == 200 and receiver.delay:
                    time.sleep(receiver.delay)
                if status != 400:
                    with receiver.lock:
                        receiver.attempts.append(
                            Delivery(
                                headers["webhook-id"],
                                int(headers["webhook-timestamp"]),
                                body,
                                status,
                            )
                        )
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def verify(self, body: bytes, headers: dict[str, str]) -> Any:
        """The event of a delivery; WebhookVerificationError when it does not verify."""
        return self.webhook.verify(body, headers)

    def _status(self, webhook_id: str) -> int:
        with self.lock:
            tried = sum(1 for a in self.attempts if a.webhook_id == webhook_id)
        return 500 if tried < self.fail_first else 200

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks?token=receiver-secret"

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def delivered(self) -> dict[str, list[Delivery]]:
        """The webhook ids answered 200, each with its deliveries (at least once: maybe
        more)."""
        out: dict[str, list[Delivery]] = {}
        with self.lock:
            for attempt in self.attempts:
                if attempt.status == 200:
                    out.setdefault(attempt.webhook_id, []).append(attempt)
        return out
