"""LLM token usage read from responses, pure (docs/llm.md): the `usage` object of an
OpenAI-compatible JSON response, or of a server-sent-events stream's usage chunk; chat and
completions (`prompt_tokens`, `completion_tokens`), embeddings (`prompt_tokens`) and the
Responses API (`input_tokens`, `output_tokens`; in a stream, its `response.completed` event),
with the cached prompt tokens and the reasoning tokens they detail.

A stream is read chunk by chunk as it passes (nothing is held back from the client): only the
current, unfinished line is kept, and at most MAX_LINE bytes of it. A stream without a usage
chunk has its content chunks counted, marked estimated: a metric, never a charge (its
reservation stays). Counts a server reports are believed only when they are whole numbers
from 0 to MAX_TOKENS: a lying `usage` (negative, 10^18, strings, floats) is no usage.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

MAX_TOKENS = 10**9  # a count above this (per response) is not believed
MAX_LINE = 1 << 20  # an SSE line longer than this is skipped, never held whole
MAX_JSON_BODY = 4 << 20  # a JSON response body is read for its usage up to this size


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    estimated: bool = False  # completion counted from content chunks (no usage chunk)
    cached_tokens: int = 0  # of the prompt tokens, read from the server's cache
    reasoning_tokens: int = 0  # of the completion tokens, the model's reasoning


NOTHING_USED = Usage(0, 0)  # a response the model server refused (a 4xx): it used nothing


def _count(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKENS:
        return value
    return None


# (Responses API, chat and completions): input, output and their details' names
_RESPONSES_NAMES = (
    "input_tokens",
    "output_tokens",
    "input_tokens_details",
    "output_tokens_details",
)
_CHAT_NAMES = (
    "prompt_tokens",
    "completion_tokens",
    "prompt_tokens_details",
    "completion_tokens_details",
)
# the Responses API's last stream events: each carries the whole response, usage included
_RESPONSE_ENDS = frozenset(("response.completed", "response.incomplete", "response.failed"))


def usage_of(obj: Any) -> Usage | None:
    """The usage an OpenAI response (or stream chunk, or a Responses API stream event with
    its `response`) object reports, if believable."""
    if not isinstance(obj, dict):
        return None
    usage = obj.get("usage")
    if usage is None and isinstance(obj.get("response"), dict):
        usage = obj["response"].get("usage")
    if not isinstance(usage, dict):
        return None
    names = _RESPONSES_NAMES if "input_tokens" in usage else _CHAT_NAMES
    prompt = _count(usage.get(names[0]))
    # (embeddings report no completion; the Responses API always reports its output)
    completion = _count(usage.get(names[1], 0 if names is _CHAT_NAMES else None))
    if prompt is None or completion is None:
        return None
    cached = _detail(usage.get(names[2]), "cached_tokens")
    reasoning = _detail(usage.get(names[3]), "reasoning_tokens")
    return Usage(
        prompt,
        completion,
        cached_tokens=min(cached, prompt),
        reasoning_tokens=min(reasoning, completion),
    )


def _detail(details: Any, name: str) -> int:
    """A count a usage's details object gives (0: none, or not believable)."""
    return (_count(details.get(name)) or 0) if isinstance(details, dict) else 0


def json_usage(body: bytes) -> Usage | None:
    """The usage of a whole JSON response body (None: not JSON, none, or not believable)."""
    try:
        return usage_of(json.loads(body))
    except (ValueError, RecursionError):
        return None


class StreamUsage:
    """Reads an SSE response as its chunks pass: the last usage chunk, content chunks."""

    def __init__(self) -> None:
        self._line = bytearray()
        self._skipping = False  # inside a line longer than MAX_LINE
        self.usage: Usage | None = None
        self.usage_chunks = 0
        self.content_chunks = 0
        self.bad_lines = 0
        self.done = False  # `data: [DONE]` (or a Responses API end event) passed: the last

    def feed(self, chunk: bytes) -> None:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                self._keep(chunk[start:])
                return
            self._keep(chunk[start:end])
            if not self._skipping:
                self._line_done(bytes(self._line))
            self._line.clear()
            self._skipping = False
            start = end + 1

    def _keep(self, part: bytes) -> None:
        if self._skipping:
            return
        if len(self._line) + len(part) > MAX_LINE:
            self._line.clear()
            self._skipping = True
            self.bad_lines += 1
        else:
            self._line += part

    def _line_done(self, line: bytes) -> None:
        line = line.rstrip(b"\r")
        if not line.startswith(b"data:"):
            return  # comments, event:, id:, blank lines between events
        payload = line[5:].strip()
        if payload == b"[DONE]":
            self.done = True
            return
        try:
            obj = json.loads(payload)
        except (ValueError, RecursionError):
            self.bad_lines += 1
            return
        usage = usage_of(obj)
        if usage is not None:
            self.usage = usage  # (a second usage chunk replaces the first: never both)
            self.usage_chunks += 1
        if not isinstance(obj, dict):
            return
        kind = obj.get("type")
        if kind in _RESPONSE_ENDS:
            self.done = True
        choices = obj.get("choices")
        if kind == "response.output_text.delta" or (
            isinstance(choices, list) and any(_has_content(c) for c in choices)
        ):
            self.content_chunks += 1

    def result(self, prompt_estimate: int = 0) -> Usage | None:
        """What the stream used: its usage chunk, else content chunks as an estimate."""
        if self.usage is not None:
            return self.usage
        if self.content_chunks:
            return Usage(prompt_estimate, self.content_chunks, estimated=True)
        return None


def _has_content(choice: Any) -> bool:
    if not isinstance(choice, dict):
        return False
    delta = choice.get("delta")
    text = choice.get("text")
    content = delta.get("content") if isinstance(delta, dict) else None
    return bool(content) or bool(text)


# --- what extauthz adds to a request body, and the usage chunk it takes out ----------------

ASK_FOR_USAGE = ("stream_options", {"include_usage": True})  # `stream_usage: require`
# where Envoy's Lua filter writes what it read of a response (dynamic metadata namespace)
USAGE_NAMESPACE = "extauthz.usage"
# the gRPC initial metadata that names the body-editing ext_proc filter to extauthz
EDIT_FILTER_METADATA = ("x-extauthz-filter", "edit")


class UsageChunkRemover:
    """Passes an SSE stream on event by event, without the usage chunk a request was made to
    ask for (`choices: []` with a `usage`). What is held back is the current, unfinished event
    only; one longer than MAX_LINE ends the filtering (the rest passes as it comes). Each
    byte is searched once for an event's end, whatever the pieces it comes in."""

    def __init__(self) -> None:
        self._held = bytearray()
        self._searched = 0  # bytes of `_held` known to hold no event end
        self._off = False
        self.removed = 0

    def feed(self, chunk: bytes, last: bool = False) -> bytes:
        """What of `chunk` (and what was held) goes to the client now; `last`: the stream's
        end, everything held goes."""
        if self._off:
            return chunk
        held = self._held
        held += chunk
        out = bytearray()
        start = 0
        # (an end split over two pieces: look again at the last bytes searched)
        found = _EVENT_END.search(held, max(0, self._searched - 3))
        while found is not None:
            end = found.end()
            event = bytes(held[start:end])
            if not self._is_asked_usage(event):
                out += event
            start = end
            found = _EVENT_END.search(held, end)
        del held[:start]
        self._searched = len(held)
        if last or len(held) > MAX_LINE:
            self._off = not last
            out += held
            held.clear()
            self._searched = 0
        return bytes(out)

    def _is_asked_usage(self, event: bytes) -> bool:
        if b'"usage"' not in event:
            return False
        for line in event.splitlines():
            if line.startswith(b"data:"):
                try:
                    obj = json.loads(line[5:])
                except (ValueError, RecursionError):
                    return False
                if isinstance(obj, dict) and obj.get("choices") == [] and usage_of(obj):
                    self.removed += 1
                    return True
        return False


_EVENT_END = re.compile(rb"\r?\n\r?\n")  # an SSE event's blank line (LF or CRLF)
