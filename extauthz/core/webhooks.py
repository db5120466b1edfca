"""Standard Webhooks, pure: the secret's `whsec_` form, the signature, the body, the ids, the
retry schedule, and the budget thresholds (docs/webhooks.md). The sending is
runtime/webhooks.py; the queue in Redis storage/webhook_queue.py.

A delivery is a POST of the body with three headers: `webhook-id` (the event's id, the same
on every attempt), `webhook-timestamp` (unix seconds of the attempt) and `webhook-signature`
(`v1,` + base64 of HMAC-SHA256 over `{id}.{timestamp}.{body}` with the secret's bytes).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

SECRET_PREFIX = "whsec_"  # noqa: S105 (the form of a secret, not one)
MIN_SECRET_BYTES = 24  # (the spec: from 24 to 64 bytes of randomness)
MAX_SECRET_BYTES = 64
WHSEC_RULE = (
    "write whsec_ followed by the base64 of 24 to 64 random bytes, e.g. "
    '`echo "whsec_$(head -c 32 /dev/urandom | base64)"`'
)
THRESHOLDS = (50, 80, 100)  # percent of a budget or token limit: budget.threshold
FIRST_RETRY = 1.0  # seconds after a failed attempt; doubled after each one...
MAX_RETRY = 3600.0  # ...up to this
RETRY_FOR = 86400.0  # seconds from the first attempt; then the event is dropped
MAX_ID_CHARS = 200  # a longer id (or one with other characters) is sent as its hash
_SAFE_ID = re.compile(rf"[A-Za-z0-9._:@/+=\-]{{1,{MAX_ID_CHARS}}}", re.ASCII)


def parse_secret(text: str) -> bytes:
    """The key of a secret written `whsec_<base64>` (surrounding white space ignored);
    ValueError with a message that says what is wrong and WHSEC_RULE."""
    text = text.strip()
    if not text:
        raise ValueError(f"it is empty: {WHSEC_RULE}")
    if not text.startswith(SECRET_PREFIX):
        raise ValueError(f"it does not start with {SECRET_PREFIX}: {WHSEC_RULE}")
    try:
        key = base64.b64decode(text[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"what follows {SECRET_PREFIX} is not base64: {WHSEC_RULE}") from None
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise ValueError(f"its key is {len(key)} bytes: {WHSEC_RULE}")
    return key


def sign(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def signed_headers(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The headers of one delivery attempt made at `timestamp` (unix seconds)."""
    return {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(key, webhook_id, timestamp, body),
    }


def webhook_id(event_id: str) -> str:
    """The `webhook-id` of an event: its id when short and of plain characters (letters,
    digits and `._:@/+=-`), else `sha256:` and the hex digest of its UTF-8 (a header value
    stays plain ASCII whatever a route, subject or token name holds). Stable: the same event
    id always gives the same webhook id."""
    if _SAFE_ID.fullmatch(event_id):
        return event_id
    return "sha256:" + hashlib.sha256(event_id.encode("utf-8", "surrogatepass")).hexdigest()


def iso_utc(seconds: float) -> str:
    """`2026-12-07T06:21:06Z`: unix seconds as ISO 8601 UTC (whole seconds)."""
    return datetime.fromtimestamp(int(seconds), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def event_body(kind: str, created: float, data: Mapping[str, Any]) -> bytes:
    """The JSON body `{"type", "timestamp", "data"}` (compact, keys in a stable order);
    TypeError or ValueError when `data` is not JSON."""
    event = {"type": kind, "timestamp": iso_utc(created), "data": data}
    return json.dumps(event, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def retry_delay(failures: int) -> float:
    """Seconds to wait after the `failures`-th failed attempt (1, 2, 4... up to MAX_RETRY)."""
    if failures <= 1:
        return FIRST_RETRY
    return min(MAX_RETRY, FIRST_RETRY * 2.0 ** min(failures - 1, 62))


def next_attempt(first: float, failures: int, now: float) -> float | None:
    """When to try again after a failed attempt at `now` (`failures` so far, the first
    attempt at `first`); None: the day is over, drop the event. The last try is at the
    day's end, whatever the backoff says."""
    end = first + RETRY_FOR
    if now >= end:
        return None
    return min(now + retry_delay(failures), end)


def thresholds_reached(total: int, count: int, above: int = 0) -> tuple[int, ...]:
    """The thresholds (percent of `count`) that `total` has reached, of those above
    `above` (the highest one already announced)."""
    if count <= 0:
        return ()
    return tuple(p for p in THRESHOLDS if p > above and total * 100 >= p * count)
