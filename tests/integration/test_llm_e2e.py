"""LLM endpoints through the real Envoy and extauthz (docs/llm.md): the official `openai`
client against the demo server's OpenAI-compatible API, the model read from the body that
Envoy sends on the `llm` route only."""

from __future__ import annotations

import gzip
import http.client
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from extauthz.admin import tokens
from extauthz.config import Settings
from extauthz.core.llm import MAX_BODY_BYTES
from extauthz.dev.stack import Stack
from tests.support.metrics import scrape
from tests.support.procs import local_stack, wait_for

pytestmark = [pytest.mark.redis, pytest.mark.envoy]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    settings = Settings(usage_flush=0.5, auth_failure_burst=0)
    with local_stack(tmp_path_factory.mktemp("llm"), settings) as s:
        yield s


def mint(stack: Stack, models: list[str] | None = None, routes: tuple[str, ...] = ("llm",)) -> str:
    return tokens.create(stack.store(), routes, models=models, now=time.time()).token


def client(stack: Stack, token: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{stack.external_url}/v1", api_key=token, max_retries=0, timeout=10
    )


def post(stack: Stack, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", stack.ports.external.port, timeout=10)
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_one_model_allowed_the_other_refused(stack: Stack) -> None:
    small = client(stack, mint(stack, ["demo-small"]))
    messages: Any = [{"role": "user", "content": "say hello to the demo"}]
    raw = small.chat.completions.with_raw_response.create(model="demo-small", messages=messages)
    answer = raw.parse()
    assert answer.choices[0].message.content == "demo-small heard 5 words"
    assert answer.usage is not None and answer.usage.prompt_tokens == 5
    # the model server learns which model extauthz allowed (spoof-proof: set by extauthz)
    assert raw.headers["x-demo-model-header"] == "demo-small"
    with pytest.raises(openai.PermissionDeniedError) as refused:
        small.chat.completions.create(model="demo-large", messages=messages)
    assert refused.value.response.json()["error"] == "model_not_allowed"
    with pytest.raises(openai.NotFoundError) as missing:
        small.chat.completions.create(model="gpt-4o", messages=messages)
    assert missing.value.response.json()["error"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        small.chat.completions.create(model="Demo-Small", messages=messages)  # exact names
    # listing models needs no model; a token for every model may use both
    assert [m.id for m in small.models.list()] == ["demo-small", "demo-large"]
    both = client(stack, mint(stack))
    assert both.chat.completions.create(model="demo-large", messages=messages).model == "demo-large"
    assert both.completions.create(model="demo-small", prompt="one two").usage.prompt_tokens == 2
    assert len(both.embeddings.create(model="demo-small", input=["a", "b"]).data) == 2
    # no token, a bad token, a token for another route
    with pytest.raises(openai.AuthenticationError):
        client(stack, "eat_" + "x" * 43).chat.completions.create(
            model="demo-small", messages=messages
        )
    anonymous = post(stack, "/v1/chat/completions", b'{"model": "demo-small"}', {})
    assert anonymous[0] == 401 and json.loads(anonymous[1])["error"] == "unauthorized"
    with pytest.raises(openai.PermissionDeniedError) as other:
        client(stack, mint(stack, routes=("deployment-a",))).models.list()
    assert other.value.response.json()["error"] == "forbidden"


def test_streaming_through_envoy(stack: Stack) -> None:
    small = client(stack, mint(stack, ["demo-small"]))
    messages: Any = [{"role": "user", "content": "stream me four words"}]
    chunks = list(
        small.chat.completions.create(
            model="demo-small",
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "demo-small heard 4 words"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    with pytest.raises(openai.PermissionDeniedError):
        list(small.chat.completions.create(model="demo-large", messages=messages, stream=True))
    # a client that goes away mid-stream leaves nothing broken behind it
    body = json.dumps({"model": "demo-small", "messages": messages, "stream": True}).encode()
    conn = socket.create_connection(("127.0.0.1", stack.ports.external.port), timeout=10)
    conn.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + small.api_key.encode() + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    assert conn.recv(64).startswith(b"HTTP/1.1 200")
    conn.close()
    assert small.chat.completions.create(model="demo-small", messages=messages).choices


@pytest.mark.parametrize(
    ("body", "headers", "status", "error"),
    [
        (b"", {}, 400, "model_required"),
        (b"not json", {}, 400, "model_required"),
        (b'\xef\xbb\xbf{"model": "demo-small"}', {}, 400, "model_required"),
        (b'{"model": "demo-\xff"}', {}, 400, "model_required"),
        (b'{"model": null}', {}, 400, "model_required"),
        (b'{"model": 5}', {}, 400, "model_required"),
        (b'{"model": "demo-small", "model": "demo-large"}', {}, 400, "model_required"),
        (b'{"messages": [{"model": "demo-small"}]}', {}, 400, "model_required"),
        (b'{"model": "demo-small\\u0007"}', {}, 400, "model_required"),
        (json.dumps({"model": "x" * 10_000}).encode(), {}, 400, "model_required"),
        # compressed bodies are not read: decompress in Envoy before ext_authz, or refuse
        (
            gzip.compress(b'{"model": "demo-small"}', mtime=0),
            {"content-encoding": "gzip"},
            400,
            "model_required",
        ),
        (
            b'{"x": ' + b"[" * 3000 + b"]" * 3000 + b', "model": "demo-small"}',
            {},
            400,
            "model_required",
        ),
        (
            b'{"user": "' + b"y" * 900_000 + b'", "model": "demo-large"}',
            {},
            403,
            "model_not_allowed",
        ),
    ],
)
def test_bodies_through_envoy(
    stack: Stack, body: bytes, headers: dict[str, str], status: int, error: str
) -> None:
    token = mint(stack, ["demo-small"])
    sent = {"authorization": f"Bearer {token}", "content-type": "application/json", **headers}
    code, reply = post(stack, "/v1/chat/completions", body, sent)
    assert (code, json.loads(reply)["error"]) == (status, error)


def test_a_body_over_the_limit_is_413_from_envoy_and_chunked_bodies_are_read(stack: Stack) -> None:
    token = mint(stack, ["demo-small"])
    headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    huge = json.dumps({"model": "demo-small", "prompt": "z" * (MAX_BODY_BYTES + 10)}).encode()
    assert post(stack, "/v1/completions", huge, headers)[0] == 413
    conn = http.client.HTTPConnection("127.0.0.1", stack.ports.external.port, timeout=10)
    parts = [b'{"model": "demo-small", ', b'"prompt": "chunked body"}']
    conn.request("POST", "/v1/completions", body=iter(parts), headers=headers, encode_chunked=True)
    response = conn.getresponse()
    assert response.status == 200 and json.loads(response.read())["model"] == "demo-small"
    conn.close()


def test_the_model_is_logged_and_spoofs_never_reach_the_model(stack: Stack) -> None:
    token = mint(stack, ["demo-small"])
    small = client(stack, token)
    raw = small.chat.completions.with_raw_response.create(
        model="demo-small",
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-extauthz-model": "demo-large"},
    )
    assert raw.headers["x-demo-model-header"] == "demo-small"
    # a request that names no model: a client's x-extauthz-model is removed, not passed on
    raw_list = small.models.with_raw_response.list(extra_headers={"x-extauthz-model": "spoof"})
    assert raw_list.headers["x-demo-model-header"] == ""
    log: Path = stack.state_dir / "envoy.log"
    wait_for(lambda: '"model":"demo-small"' in log.read_text(), 5, "the access log line")


def test_usage_and_metrics_per_model(stack: Stack) -> None:
    issued = tokens.create(stack.store(), ["llm"], now=time.time())
    both = client(stack, issued.token)
    for model in ("demo-small", "demo-large", "demo-large"):
        both.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])

    def requests() -> dict[str, Any]:
        day = tokens.usage(stack.store(), issued.record.id, 1, time.time())["days"][0]
        return {m: c["requests"] for m, c in day.get("models", {}).items()}

    wait_for(lambda: requests() == {"demo-large": 2, "demo-small": 1}, 5, "usage")
    text = scrape(stack.settings.metrics_listen)
    assert 'extauthz_llm_requests_total{model="demo-large",route="llm"}' in text


def test_tokens_are_counted_from_responses(stack: Stack) -> None:
    """Envoy streams each LLM response past extauthz
    (docs/llm.md#tokens-counted-from-responses), which charges the tokens its usage reports to
    the caller, per day and model. The `llm` route has `stream_usage: require`: a stream that
    does not ask for a usage chunk is asked for one (and does not see it); one whose
    `stream_options` say no is counted one token per content chunk, marked estimated."""
    issued = tokens.create(stack.store(), ["llm"], now=time.time())
    both = client(stack, issued.token)
    messages: Any = [{"role": "user", "content": "count these five words"}]
    plain = both.chat.completions.create(model="demo-small", messages=messages)
    streamed = list(
        both.chat.completions.create(
            model="demo-large",
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    silent = list(both.chat.completions.create(model="demo-large", messages=messages, stream=True))
    assert all(chunk.usage is None and chunk.choices for chunk in silent)  # asked, taken out
    refused = both.chat.completions.create(
        model="demo-large", messages=messages, stream=True, stream_options={"include_usage": False}
    )
    assert all(chunk.usage is None for chunk in refused)
    assert plain.usage is not None and streamed[-1].usage is not None

    def models() -> dict[str, Any]:
        day = tokens.usage(stack.store(), issued.record.id, 1, time.time())["days"][0]
        return dict(day.get("models", {}))

    expected = {
        "demo-small": {
            "requests": 1,
            "prompt_tokens": plain.usage.prompt_tokens,
            "completion_tokens": plain.usage.completion_tokens,
            # (priced in the example policy at $1,000 and $2,000 per million tokens)
            "cost_usd": (plain.usage.prompt_tokens * 1000 + plain.usage.completion_tokens * 2000)
            / 1e6,
        },
        "demo-large": {
            "requests": 3,
            "prompt_tokens": 2 * streamed[-1].usage.prompt_tokens,
            "completion_tokens": 2 * streamed[-1].usage.completion_tokens,
            "estimated_completion_tokens": 4,  # "demo-large heard 4 words": 4 content chunks
        },
    }
    try:
        wait_for(lambda: models() == expected, 5, "the token usage")
    except TimeoutError:
        assert models() == expected
