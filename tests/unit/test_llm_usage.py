"""Token usage read from LLM responses (issue #25): JSON bodies and SSE streams read chunk by
chunk, lying usage objects, odd streams."""

from __future__ import annotations

import json

import pytest

from extauthz.core.llm_usage import MAX_LINE, StreamUsage, Usage, json_usage, usage_of


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
