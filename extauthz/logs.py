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
from typing import Any

REDACTED = "[redacted]"
_PATTERNS = (
    re.compile(r"eat_[A-Za-z0-9_\-]{8,}"),  # our tokens
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
