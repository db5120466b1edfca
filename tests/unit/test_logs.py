from __future__ import annotations

import io
import json
import logging

import pytest

from extauthz.logs import JsonFormatter, RedactingFilter, redact


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("token eat_Abc123_-xyzXYZ987654 rejected", "eat_Abc123_-xyzXYZ987654"),
        ("header authorization: Bearer abc.def-ghi", "abc.def-ghi"),
        ("got Basic cGFwZXJzcGFjZTpzZWNyZXQ=", "cGFwZXJzcGFjZTpzZWNyZXQ="),
        ("jwt eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln here", "eyJzdWIiOiJ4In0"),
        ("redis://user:hunter2@redis:6379/0", "hunter2"),
        ('{"cookie": "session=abcdef"}', "session=abcdef"),
    ],
)
def test_redact(text: str, secret: str) -> None:
    assert secret not in redact(text)
    assert "[redacted]" in redact(text)


def test_filter_and_json_formatter() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("bad %s", "Bearer eat_supersecretvalue123", extra={"fields": {"route": "r"}})
        try:
            raise ValueError("eat_inexceptiontoken12345")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0]["msg"] in ("bad [redacted]", "bad Bearer [redacted]")
    assert lines[0]["route"] == "r"
    assert "eat_inexceptiontoken12345" not in stream.getvalue()
