"""LLM endpoints against an OpenAI-compatible server this project did not write
(docs/llm.md#try-it): LiteLLM's proxy (mock responses for demo-small and demo-large, real
OpenAI API, real usage objects and stream usage chunks), behind the real Envoy and extauthz,
driven by the official `openai` client. LiteLLM lives in a virtualenv of its own
(`.venv-litellm`, pinned by requirements/litellm.lock, made by scripts/install-deps.sh)."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import yaml

from extauthz.admin import tokens
from extauthz.config import Settings
from extauthz.dev.ports import free_ports
from extauthz.dev.stack import Stack
from tests.support.procs import REPO, envoy_in_front, local_stack, stop, wait_for

pytestmark = [pytest.mark.redis, pytest.mark.envoy]

LITELLM = REPO / ".venv-litellm/bin/litellm"
MODELS = {"demo-small": "hello from the small model", "demo-large": "hello from the large one"}


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="module")
def litellm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    if not os.access(LITELLM, os.X_OK):
        message = f"{LITELLM} missing (scripts/install-deps.sh makes it; CI does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    work = tmp_path_factory.mktemp("litellm")
    config = {
        "model_list": [
            {
                "model_name": name,
                "litellm_params": {
                    "model": f"openai/{name}",
                    "api_key": "unused",
                    "mock_response": reply,
                },
            }
            for name, reply in MODELS.items()
        ],
        "litellm_settings": {"telemetry": False},
        # no key of its own: extauthz in front decides, and removes the client's credential
        "general_settings": {"dangerously_permit_weak_or_unset_master_key": True},
    }
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    (port,) = free_ports(1)
    with open(work / "litellm.log", "wb") as log:
        proc = subprocess.Popen(
            [str(LITELLM), "--config", "config.yaml", "--host", "127.0.0.1", "--port", str(port)],
            cwd=work,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False"},
        )
    try:
        wait_for(
            lambda: _ok(f"http://127.0.0.1:{port}/health/liveliness") or proc.poll() is not None,
            60,
            "litellm",
        )
        assert proc.poll() is None, (work / "litellm.log").read_text()[-2000:]
        yield port
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def gateway(litellm: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, int]]:
    """The local stack's Redis and extauthz, and an Envoy of our own whose model cluster is
    LiteLLM: (stack, that Envoy's external port)."""
    work = tmp_path_factory.mktemp("gateway")
    with (
        local_stack(work / "stack", Settings(auth_failure_burst=0, usage_flush=0.5)) as stack,
        envoy_in_front(stack, work, model_http=litellm) as external,
    ):
        yield stack, external


def client(gateway: tuple[Stack, int], models: list[str] | None) -> openai.OpenAI:
    stack, port = gateway
    token = tokens.create(stack.store(), ["llm"], models=models, now=time.time()).token
    return openai.OpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key=token, max_retries=0, timeout=20
    )


def test_litellm_behind_extauthz(gateway: tuple[Stack, int]) -> None:
    small = client(gateway, ["demo-small"])
    messages: Any = [{"role": "user", "content": "hello there"}]
    answer = small.chat.completions.create(model="demo-small", messages=messages)
    assert answer.choices[0].message.content == MODELS["demo-small"]
    assert answer.usage is not None and answer.usage.prompt_tokens > 0
    with pytest.raises(openai.PermissionDeniedError) as refused:
        small.chat.completions.create(model="demo-large", messages=messages)
    assert refused.value.response.json()["error"] == "model_not_allowed"  # extauthz, not LiteLLM
    with pytest.raises(openai.NotFoundError):
        small.chat.completions.create(model="gpt-4o", messages=messages)  # not the route's
    assert (
        client(gateway, None).chat.completions.create(model="demo-large", messages=messages).choices
    )


def test_litellm_streams_with_its_usage_chunk(gateway: tuple[Stack, int]) -> None:
    small = client(gateway, ["demo-small"])
    chunks = list(
        small.chat.completions.create(
            model="demo-small",
            messages=[{"role": "user", "content": "stream please"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == MODELS["demo-small"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_tokens_counted_equal_litellms_own_usage(gateway: tuple[Stack, int]) -> None:
    """The tokens extauthz charges equal the usage LiteLLM reports, to the token, for answers
    and for streams with a usage chunk."""
    stack, port = gateway
    issued = tokens.create(stack.store(), ["llm"], now=time.time())
    both = openai.OpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key=issued.token, max_retries=0, timeout=20
    )
    messages: Any = [{"role": "user", "content": "count me, please, exactly"}]
    answer = both.chat.completions.create(model="demo-small", messages=messages)
    chunks = list(
        both.chat.completions.create(
            model="demo-large",
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert answer.usage is not None and chunks[-1].usage is not None
    expected = {
        "demo-small": (answer.usage.prompt_tokens, answer.usage.completion_tokens),
        "demo-large": (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens),
    }

    def charged() -> dict[str, tuple[int, int]]:
        day = tokens.usage(stack.store(), issued.record.id, 1, time.time())["days"][0]
        return {
            m: (c.get("prompt_tokens", 0), c.get("completion_tokens", 0))
            for m, c in day.get("models", {}).items()
        }

    try:
        wait_for(lambda: charged() == expected, 10, "the charged tokens")
    except TimeoutError:
        assert charged() == expected


def _post(port: int, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        connection.request("POST", path, body, headers)
        response = connection.getresponse()
        data = response.read()
    finally:
        connection.close()
    try:
        return response.status, json.loads(data)
    except ValueError:
        return response.status, data


FORM = "application/x-www-form-urlencoded"  # (curl -d's content type)
SMUGGLED = [  # a demo-small token asking LiteLLM for demo-large, each another way
    ("/v1/completions", FORM,
     b'{"model":"demo-small","x":"&model=demo-large&prompt=hi&y=","prompt":"hi"}',
     415, "unsupported_media_type"),
    ("/v1/chat/completions?model=demo-large", "application/json",
     b'{"model":"demo-small","messages":[{"role":"user","content":"hi"}]}', 400, "invalid_request"),
    ("/v1/chat/completions?Model=demo-large", "application/json",
     b'{"model":"demo-small","messages":[{"role":"user","content":"hi"}]}', 400, "invalid_request"),
    ("/v1/chat/completions", "application/json",
     b'{"model":"demo-small","MODEL":"demo-large","messages":[{"role":"user","content":"hi"}]}',
     400, "invalid_request"),
    ("/v1/engines/demo-large/chat/completions", "application/json",
     b'{"model":"demo-small","messages":[{"role":"user","content":"hi"}]}', 404, "unknown_endpoint"),
    ("/v1/chat/completions", "application/json",
     b'{"model":"demo-small","stream":"true","messages":[{"role":"user","content":"hi"}]}',
     400, "invalid_request"),
    ("/v1/chat/completions", "application/json",
     b'{"model":"demo-small","messages":[{"role":"user","content":"hi"}],"max_tokens":10,'
     b'"timeout":0.001,"num_retries":0,"fallbacks":[{"model":"demo-large","max_tokens":9999}]}',
     400, "invalid_request"),
    ("/v1/chat/completions", "application/json",
     b'{"model":"demo-small","messages":[{"role":"user","content":"hi"}],"max_tokens":10,'
     b'"extra_body":{"max_tokens":100000,"n":3}}', 400, "invalid_request"),
    ("/v1/chat/completions", "application/json",
     b'{"model":"demo-small","messages":[{"role":"user","content":"hi"}],"max_tokens":10,'
     b'"additional_drop_params":["max_tokens"]}', 400, "invalid_request"),
    ("/v1/chat/completions", "application/json; charset=utf-7",
     b'{"model":"demo-small","+AG0-odel":"demo-large","messages":[]}',
     415, "unsupported_media_type"),
    ("/v1/chat/completions", "application/json",
     b'{"model":"demo-small,demo-large","messages":[{"role":"user","content":"hi"}]}',
     400, "model_required"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "content_type", "body", "status", "error"), SMUGGLED)
def test_another_place_naming_the_model_is_refused_before_litellm(
    gateway: tuple[Stack, int],
    litellm: int,
    path: str,
    content_type: str,
    body: bytes,
    status: int,
    error: str,
) -> None:
    stack, port = gateway
    token = tokens.create(stack.store(), ["llm"], models=["demo-small"], now=time.time()).token
    headers = {"authorization": f"Bearer {token}", "content-type": content_type}
    code, answer = _post(port, path, body, headers)
    assert isinstance(answer, dict) and (code, answer.get("error")) == (status, error), answer
    assert answer["message"]  # (it says what to change)


def test_litellm_itself_reads_the_model_from_those_places(litellm: int) -> None:
    """Without extauthz in front, LiteLLM serves demo-large for the form body and the query
    (what the test above refuses is a real way around a model allow-list)."""
    form, query = SMUGGLED[0], SMUGGLED[1]
    served = []
    for path, content_type, body, _, _ in (form, query):
        code, answer = _post(litellm, path, body, {"content-type": content_type})
        served.append((code, answer.get("model") if isinstance(answer, dict) else answer))
    assert any(model and "demo-large" in str(model) for _, model in served), served
