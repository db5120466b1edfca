"""The demo model server's OpenAI-compatible API (for the local stack, docker-compose and
tests): `GET /v1/models`, `POST /v1/chat/completions` (JSON, or an SSE stream with the final
usage chunk when `stream_options.include_usage` is set), `POST /v1/completions` and
`POST /v1/embeddings`, for the models `demo-small` and `demo-large`.

Answers are deterministic: the reply repeats how many words the prompt had, one token per
word, and `usage` counts words (prompt and completion), so a test can check counts to the
token (`min_tokens`, as vLLM takes it, pads the reply with "more" up to that many words).
Each response carries `x-demo-model-header`: the `x-extauthz-model` it received.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

MODELS = ("demo-small", "demo-large")
CREATED = 1_700_000_000


class LlmError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def body(self) -> dict[str, Any]:
        return {
            "error": {"message": self.message, "type": "invalid_request_error", "code": self.code}
        }


def models() -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {"id": m, "object": "model", "created": CREATED, "owned_by": "demo"} for m in MODELS
        ],
    }


def _request(raw: bytes) -> dict[str, Any]:
    try:
        request = json.loads(raw)
    except ValueError:
        raise LlmError(400, "invalid_json", "the body is not JSON") from None
    if not isinstance(request, dict):
        raise LlmError(400, "invalid_json", "the body is not a JSON object")
    if request.get("model") not in MODELS:
        raise LlmError(404, "model_not_found", f"no model {request.get('model')!r} here")
    return request


def _words(value: Any) -> int:
    """Words in a prompt: a string, a list of messages (their content), or a list."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_words(v.get("content", "") if isinstance(v, dict) else v) for v in value)
    return 0


def _reply(request: dict[str, Any], prompt_words: int) -> list[str]:
    words = f"{request['model']} heard {prompt_words} words".split()
    least = request.get("min_tokens")  # (vLLM's sampling parameter: benches ask for long replies)
    if isinstance(least, int) and 0 < least <= 100_000:
        words += ["more"] * (least - len(words))
    limit = request.get("max_tokens") or request.get("max_completion_tokens")
    return words[: int(limit)] if isinstance(limit, int) and limit > 0 else words


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def chat(raw: bytes) -> tuple[dict[str, Any] | None, Iterator[bytes] | None]:
    """A chat completion: (JSON answer, None) or (None, SSE lines) when streaming."""
    request = _request(raw)
    prompt = _words(request.get("messages", []))
    words = _reply(request, prompt)
    if not request.get("stream"):
        return {
            "id": "chatcmpl-demo",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": " ".join(words)},
                    "finish_reason": "stop",
                }
            ],
            "usage": _usage(prompt, len(words)),
        }, None
    options = request.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    return None, _stream(request["model"], words, prompt, include_usage)


def _stream(model: str, words: list[str], prompt: int, include_usage: bool) -> Iterator[bytes]:
    base = {
        "id": "chatcmpl-demo",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }

    def event(data: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(data).encode() + b"\n\n"

    yield event(
        {
            **base,
            "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
            ],
        }
    )
    for i, word in enumerate(words):
        text = word if i == 0 else " " + word
        yield event(
            {**base, "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
        )
    yield event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if include_usage:
        yield event({**base, "choices": [], "usage": _usage(prompt, len(words))})
    yield b"data: [DONE]\n\n"


def completion(raw: bytes) -> dict[str, Any]:
    request = _request(raw)
    prompt = _words(request.get("prompt", ""))
    words = _reply(request, prompt)
    return {
        "id": "cmpl-demo",
        "object": "text_completion",
        "created": int(time.time()),
        "model": request["model"],
        "choices": [
            {"index": 0, "text": " ".join(words), "finish_reason": "stop", "logprobs": None}
        ],
        "usage": _usage(prompt, len(words)),
    }


def embeddings(raw: bytes) -> dict[str, Any]:
    request = _request(raw)
    inputs = request.get("input", "")
    items = inputs if isinstance(inputs, list) else [inputs]
    prompt = _words(items)
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}
            for i in range(len(items))
        ],
        "model": request["model"],
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
    }
