"""Logging: text or one JSON object per line, and a redaction filter on every handler.

No code path passes a secret to a logger on purpose; the filter is the second line of
defence: anything shaped like a token, a JWT, a Basic/Bearer credential, an Authorization
or Cookie value, or a password in a URL is replaced by `[redacted]` before output.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

REDACTED = "[redacted]"
_PATTERNS = (
    re.compile(r"eat_[A-Za-z0-9_\-]{8,}"),  # our tokens
    re.compile(r"whsec_[A-Za-z0-9+/=]{8,}"),  # webhook signing secrets
    re.compile(r"eyJ[A-Za-z0-9_\-]*\.[A-Za-z0-9_\-]*\.[A-Za-z0-9_\-]*"),  # JWTs
    re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9\-._~+/]+=*"),
    re.compile(r"(?i)\b(authorization|cookie|password|secret)([\"']?\s*[:=]\s*)[^\s,;}]+"),
    re.compile(r"(?<=://)([^:/@\s]*):[^@/\s]+@"),  # user:password@ in URLs
)


def redact(text: str) -> str:
    for pattern in _PATTERNS:
        if "authorization" in pattern.pattern:
            text = pattern.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
        elif "://" in pattern.pattern:
            text = pattern.sub(lambda m: f"{m.group(1)}:{REDACTED}@", text)
        else:
            text = pattern.sub(REDACTED, text)
    return text


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        out.update(getattr(record, "fields", {}))
        if record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out)


def setup(log_format: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class LogSampler:
    """At most `per_second` lines per kind of line (after a burst of `burst`); the rest are
    counted, and the count is reported with the next line of that kind that gets through, or
    by `drain()` (called periodically), so a flood costs a few lines a second, not one each.
    """

    def __init__(
        self, per_second: float = 5.0, burst: int = 20, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.per_second = per_second
        self.burst = burst
        self.clock = clock
        self._buckets: dict[str, list[float]] = {}  # kind → [tokens, when, suppressed]
        self._lock = threading.Lock()

    def admit(self, kind: str) -> int | None:
        """None: drop this line. Otherwise log it, with this many lines suppressed before it."""
        with self._lock:
            now = self.clock()
            bucket = self._buckets.get(kind)
            if bucket is None:
                bucket = self._buckets[kind] = [float(self.burst), now, 0.0]
            bucket[0] = min(float(self.burst), bucket[0] + (now - bucket[1]) * self.per_second)
            bucket[1] = now
            if bucket[0] < 1:
                bucket[2] += 1
                return None
            bucket[0] -= 1
            suppressed, bucket[2] = int(bucket[2]), 0.0
            return suppressed

    def drain(self) -> dict[str, int]:
        """Lines suppressed and not yet reported, by kind (and forget them)."""
        with self._lock:
            out = {k: int(b[2]) for k, b in self._buckets.items() if b[2]}
            for bucket in self._buckets.values():
                bucket[2] = 0.0
            return out
