"""Token usage read from LLM responses (docs/llm.md#tokens-counted-from-responses): JSON bodies
and SSE streams read chunk by chunk, lying usage objects, odd streams."""

from __future__ import annotations

import json
from typing import Any

import pytest

from extauthz.core import llm_usage as usage_module
from extauthz.core.llm import apply_splices, read_model_request
from extauthz.core.llm_usage import (
    ASK_FOR_USAGE,
    MAX_LINE,
    StreamUsage,
    Usage,
    UsageChunkRemover,
    json_usage,
    usage_of,
)


def event(obj: object) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


CHUNK = {"choices": [{"index": 0, "delta": {"content": "word"}}]}
USAGE = {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3}}


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": -1, "completion_tokens": 3},
        {"prompt_tokens": 10**18, "completion_tokens": 3},
        {"prompt_tokens": "9", "completion_tokens": 3},
        {"prompt_tokens": 9.5, "completion_tokens": 3},
        {"prompt_tokens": True, "completion_tokens": 3},
        {"completion_tokens": 3},
        {"prompt_tokens": 9, "completion_tokens": None},
        "lots",
        None,
    ],
)
def test_lying_usage_is_no_usage(usage: object) -> None:
    assert usage_of({"usage": usage}) is None
    assert json_usage(json.dumps({"usage": usage}).encode()) is None


def test_json_usage() -> None:
    assert json_usage(json.dumps(USAGE).encode()) == Usage(9, 3)
    assert json_usage(b"not json") is None and json_usage(b"[" * 5000) is None
    assert usage_of({"usage": {"prompt_tokens": 4}}) == Usage(4, 0)  # embeddings


def test_a_stream_read_in_any_pieces_gives_the_same_usage() -> None:
    stream = b"".join([event(CHUNK)] * 3 + [event(USAGE), b"data: [DONE]\n\n"])
    stream = stream.replace(b"word", "wörd".encode())  # a two-byte character
    for size in (1, 2, 3, 7, 64, len(stream)):
        reader = StreamUsage()
        for i in range(0, len(stream), size):  # split inside data: lines and characters
            reader.feed(stream[i : i + size])
        assert reader.result() == Usage(9, 3) and reader.content_chunks == 3, size
        assert reader.done  # `data: [DONE]`: the stream's end, whatever Envoy says of it


def test_streams_without_usage_are_estimated_and_odd_ones_survive() -> None:
    reader = StreamUsage()
    reader.feed(b"".join([event(CHUNK)] * 5) + b": a comment\n\nevent: x\ndata: {broken\n\n")
    assert reader.result() == Usage(0, 5, estimated=True) and reader.bad_lines == 1
    two = StreamUsage()  # two usage chunks: the last counts, never both
    two.feed(event(USAGE) + event({"usage": {"prompt_tokens": 1, "completion_tokens": 1}}))
    assert two.result() == Usage(1, 1) and two.usage_chunks == 2
    early = StreamUsage()  # usage in a chunk that is not the last
    early.feed(event(USAGE) + event(CHUNK) + event(CHUNK))
    assert early.result() == Usage(9, 3)
    huge = StreamUsage()  # 10 MB without a newline: never held whole
    for _ in range(10):
        huge.feed(b"x" * (1 << 20))
    assert len(huge._line) <= MAX_LINE and huge.bad_lines == 1
    huge.feed(b"\n" + event(USAGE))
    assert huge.result() == Usage(9, 3)
    assert StreamUsage().result() is None


# --- stream_usage: require ------------------------------------------------------------------


def edited(body: bytes, pairs: list[tuple[str, object]]) -> bytes | None:
    """`body` with `pairs` set, as the decision asks and Envoy's Lua filter applies it."""
    found = read_model_request(body)
    assert found.model is not None, found
    return apply_splices(body, found.splices(pairs))


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"model": "m", "stream": true}', b'{"stream_options":{"include_usage":true},"model": "m", "stream": true}'),
        (b'  \n{"model":"m"}', b'  \n{"stream_options":{"include_usage":true},"model":"m"}'),
        (b'{"stream_options": null, "model":"m"}', b'{"stream_options": {"include_usage":true}, "model":"m"}'),
    ],
)  # fmt: skip
def test_asking_a_request_for_its_usage(body: bytes, expected: bytes) -> None:
    asked = edited(body, [ASK_FOR_USAGE])
    assert asked == expected
    parsed = json.loads(asked)
    assert parsed["stream_options"] == {"include_usage": True}
    capped = edited(body, [ASK_FOR_USAGE, ("max_tokens", 256)])
    assert capped is not None and json.loads(capped)["max_tokens"] == 256


@pytest.mark.parametrize("pad", [0, 20_000])
def test_a_null_cap_is_replaced_in_place_and_the_rest_untouched(pad: int) -> None:
    padding = "x" * pad
    body = f'{{"user": "{padding}", "max_tokens" : null, "n": 2, "model": "m"}}'.encode()
    out = edited(body, [("max_tokens", 64), ("stream_options", {"include_usage": True})])
    assert out is not None
    assert out.count(b"max_tokens") == 1  # (never a second key a server reads instead)
    parsed = json.loads(out)
    assert parsed["max_tokens"] == 64 and parsed["stream_options"] == {"include_usage": True}
    assert out.replace(b"64", b"null", 1).endswith(body[1:])  # the client's bytes, as sent
    escaped = b'{"max\\u005ftokens": null, "model": "m"}'
    assert json.loads(edited(escaped, [("max_tokens", 9)]) or b"")["max_tokens"] == 9


def test_splices_that_do_not_fit_the_body_are_refused() -> None:
    body = b'{"model": "m"}'
    spec = read_model_request(body).splices([("max_tokens", 5)])
    assert apply_splices(body + b" ", spec) is None  # another body (another length)
    assert apply_splices(body, "14\n9 3 x\n") is None  # (out of order)
    assert apply_splices(body, "14\n1 99 x\n") is None  # (out of bounds)
    assert apply_splices(body, "lots\n") is None


def _sse(*objects: object) -> bytes:
    return b"".join(b"data: " + json.dumps(o).encode() + b"\n\n" for o in objects) + (
        b"data: [DONE]\n\n"
    )


CONTENT = {"choices": [{"index": 0, "delta": {"content": "hi"}}]}
ASKED = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}
WITH_CHOICES = {"choices": [{"index": 0, "delta": {}}], "usage": {"prompt_tokens": 3}}


@pytest.mark.parametrize("piece", [1, 2, 7, 64, 10_000])
@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_the_asked_usage_chunk_is_taken_out_whatever_the_pieces(piece: int, newline: bytes) -> None:
    stream = _sse(CONTENT, CONTENT, ASKED).replace(b"\n", newline)
    remover = UsageChunkRemover()
    out = b""
    for i in range(0, len(stream), piece):
        out += remover.feed(stream[i : i + piece], last=i + piece >= len(stream))
    assert out == _sse(CONTENT, CONTENT).replace(b"\n", newline)
    assert remover.removed == 1
    counted = StreamUsage()
    counted.feed(stream)  # (the counting filter, before it, saw the usage)
    assert counted.result() == Usage(3, 4)


def test_other_events_pass_untouched() -> None:
    odd = b': comment\n\nevent: x\ndata: not json "usage"\n\n'
    stream = odd + _sse(WITH_CHOICES, {"usage": None, "choices": []})
    remover = UsageChunkRemover()
    assert remover.feed(stream, last=True) == stream and remover.removed == 0
    long = b"data: " + b"x" * (MAX_LINE + 10)  # an event longer than MAX_LINE: filtering ends
    remover = UsageChunkRemover()
    assert remover.feed(long) == long
    assert remover.feed(_sse(ASKED)) == _sse(ASKED)


def test_the_remover_searches_each_byte_once_whatever_the_pieces() -> None:
    """1 MiB without an event's end, in 16-byte pieces: each byte is searched once (the
    held event was searched again on every piece: 65,536 pieces x up to 1 MiB each)."""
    searched = 0
    real = usage_module._EVENT_END

    class Counting:
        def search(self, data: bytearray, start: int) -> Any:
            nonlocal searched
            searched += len(data) - start
            return real.search(data, start)

    usage_module._EVENT_END = Counting()  # type: ignore[assignment]
    try:
        remover = UsageChunkRemover()
        piece = b"data: " + b"x" * 10
        for _ in range((1 << 20) // len(piece)):
            remover.feed(piece)
    finally:
        usage_module._EVENT_END = real
    assert searched <= 4 * (1 << 20)
