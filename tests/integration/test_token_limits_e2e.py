"""LLM token limits through the real Envoy, extauthz (Check and ext_proc) and Redis
(docs/llm.md#token-limits-and-budgets): admission from the tokens the responses used, the 429
before the model, the remaining tokens on allowed responses, reservations from `max_tokens`
settled by the response's usage."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from extauthz.admin import tokens
from extauthz.config import Settings
from extauthz.core.credentials import token_hash
from extauthz.core.token_limit import TokenLimit
from extauthz.dev.stack import Stack
from tests.support.procs import REPO, local_stack
from tests.support.readme import readme_block
from tests.support.settlement import settled, tokens_counted

pytestmark = [pytest.mark.redis, pytest.mark.envoy]

PROMPT = " ".join(["word"] * 21)
# the demo server: 21 prompt tokens + 4 completion = 25


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    settings = Settings(usage_flush=0.5, auth_failure_burst=0)
    with local_stack(tmp_path_factory.mktemp("token-limits"), settings) as s:
        yield s


def client(stack: Stack, limit: str) -> openai.OpenAI:
    token = tokens.create(
        stack.store(), ["llm"], now=time.time(), token_limit=TokenLimit.parse(limit)
    ).token
    return openai.OpenAI(
        base_url=f"{stack.external_url}/v1", api_key=token, max_retries=0, timeout=10
    )


def within_one_minute(needed: float) -> None:
    """Wait for a new minute when fewer than `needed` seconds of this one are left (a
    per-minute limit starts afresh at the minute)."""
    left = 60 - time.time() % 60
    if left < needed:
        time.sleep(left + 0.05)


def chat(c: openai.OpenAI, **extra: Any) -> Any:
    messages: Any = [{"role": "user", "content": PROMPT}]
    return c.chat.completions.with_raw_response.create(
        model="demo-small", messages=messages, **extra
    )


def chat_settled(stack: Stack, c: openai.OpenAI, **extra: Any) -> Any:
    """`chat`, returned once its response (25 tokens) is settled."""
    before = tokens_counted(stack)
    answer = chat(c, **extra)
    settled(stack, before, 25)
    return answer


def bound_of(stack: Stack, **extra: Any) -> int:
    """What one `chat(**extra)` reserves (its body's bytes + its cap), read off the remaining
    tokens a first call under a large limit is told."""
    before = tokens_counted(stack)
    answer = chat(client(stack, "1000000/m"), **extra)
    parsed = answer.parse()
    if extra.get("stream"):
        list(parsed)  # (read to its end)
    settled(stack, before)
    return 1_000_000 - int(answer.headers["x-ratelimit-remaining-tokens"])


def test_a_token_gets_429_before_the_model_once_its_window_cannot_hold_a_bound(
    stack: Stack,
) -> None:
    within_one_minute(30)
    bound = bound_of(stack, max_tokens=10)
    c = client(stack, f"{bound + 37}/m")  # room for the first two (25 each), not a third
    first = chat_settled(stack, c, max_tokens=10)  # (its reservation settled to 25)
    assert first.parse().usage.total_tokens == 25
    assert first.headers["x-ratelimit-limit-tokens"] == str(bound + 37)
    assert int(first.headers["x-ratelimit-remaining-tokens"]) == 37  # (the bound reserved)
    assert chat_settled(stack, c, max_tokens=10).parse().usage.total_tokens == 25
    with pytest.raises(openai.RateLimitError) as refused:
        chat(c, max_tokens=10)
    response = refused.value.response
    assert response.json()["error"] == "token_limit_reached"
    assert 1 <= int(response.headers["retry-after"]) <= 60
    assert "x-demo-model-header" not in response.headers  # answered before the model


def test_a_bound_is_reserved_and_what_was_not_used_comes_back(stack: Stack) -> None:
    within_one_minute(30)
    c = client(stack, "2000/m")
    small = chat_settled(stack, c, max_tokens=100)  # reserves its body's bytes + 100
    before = int(small.headers["x-ratelimit-remaining-tokens"])
    assert before < 2000 - 100
    # the response used 25: the reservation is settled by ext_proc, the rest comes back
    second = chat_settled(stack, c, max_tokens=100)
    assert int(second.headers["x-ratelimit-remaining-tokens"]) > before - 100
    # a reservation that can never fit is refused before the model, and not to be retried
    with pytest.raises(openai.APIStatusError) as refused:
        chat(c, max_tokens=5000)
    assert refused.value.status_code == 413
    assert refused.value.response.json()["error"] == "request_too_large"
    assert "retry-after" not in refused.value.response.headers
    with pytest.raises(openai.APIStatusError) as capless:  # 4096 added: over 2000 alone
        chat(c)
    assert capless.value.status_code == 413


def test_a_stream_is_charged_its_usage_or_if_it_hides_it_its_whole_bound(stack: Stack) -> None:
    within_one_minute(30)
    hide: dict[str, Any] = {"stream": True, "stream_options": {"include_usage": False}}
    hidden_bound = bound_of(stack, max_tokens=10, **hide)
    assert hidden_bound > bound_of(stack, max_tokens=10)  # (a longer body than a chat call's)
    # it shows its usage: charged 25, a chat call fits after it
    shown = client(stack, f"{hidden_bound + 37}/m")
    before = tokens_counted(stack)
    chunks = list(
        shown.chat.completions.create(
            model="demo-small",
            messages=[{"role": "user", "content": PROMPT}],
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=10,
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 25
    settled(stack, before, 25)  # (settled after the stream ends)
    assert chat_settled(stack, shown, max_tokens=10).parse().usage.total_tokens == 25
    # it hides its usage (the model still served 25): charged its whole bound, no room left
    hiding = client(stack, f"{hidden_bound + 37}/m")
    before = tokens_counted(stack)
    assert sum(1 for _ in chat(hiding, max_tokens=10, **hide).parse()) > 1
    settled(stack, before)  # (its chunks are counted as an estimate, never charged)
    with pytest.raises(openai.RateLimitError):
        chat(hiding, max_tokens=10)


def test_a_token_limit_shows_in_token_show_and_the_record(stack: Stack) -> None:
    made = tokens.create(stack.store(), ["llm"], now=time.time(), token_limit=TokenLimit(9, "mo"))
    assert tokens.show(stack.store(), made.record.id).to_json()["token_limit"] == "9/mo"
    raw = stack.store().client.hgetall(stack.store().token_key(token_hash(made.token)))
    assert raw["token_limit"] == "9/mo"  # the documented field, as redis-cli shows it


def test_readme_token_limit_example(stack: Stack) -> None:
    """The README's worked example, run as written against the stack's ports."""
    within_one_minute(30)
    block = readme_block("token-limit")
    block = block.replace("127.0.0.1:10000", f"127.0.0.1:{stack.ports.external.port}")
    block = block.replace("127.0.0.1:10004", f"127.0.0.1:{stack.redis_port}")
    expected = [re.search(r"# (\d{3})", line) for line in block.splitlines()]
    codes = [m.group(1) for m in expected if m is not None]
    assert codes == ["200", "200", "429"]
    path = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    before = tokens_counted(stack)
    out = subprocess.run(
        ["bash", "-ec", block], capture_output=True, text=True, env={"PATH": path}, check=False
    )
    assert out.stdout.split() == codes, out.stderr
    settled(stack, before, 50)  # (nothing left to settle in the next test)


def test_a_caller_hopping_between_two_tokens_is_charged_to_each_as_it_used_it(
    stack: Stack,
) -> None:
    within_one_minute(30)
    bound = bound_of(stack, max_tokens=10)
    limit = f"{bound + 37}/m"  # two calls of 25, not a third
    a, b = client(stack, limit), client(stack, limit)
    for c in (a, b, a, b):  # 25 tokens each call: both tokens reach their 50
        chat_settled(stack, c, max_tokens=10)  # (the response settled before the next call)
    for c in (a, b):
        with pytest.raises(openai.RateLimitError):
            chat(c, max_tokens=10)
    fresh = client(stack, limit)  # a third token is not touched by the others' counts
    answer = chat_settled(stack, fresh, max_tokens=10)
    assert int(answer.headers["x-ratelimit-remaining-tokens"]) == 37


@pytest.fixture(scope="module")
def capped_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The local stack with `default_max_tokens: 2` on the llm route."""
    state = tmp_path_factory.mktemp("capped")
    example = (REPO / "examples/policy.yaml").read_text()
    marker = "    api: openai\n"
    assert marker in example
    policy = state / "policy.yaml"
    policy.write_text(example.replace(marker, marker + "    default_max_tokens: 2\n", 1))
    with local_stack(state / "stack", Settings(auth_failure_burst=0), policy) as s:
        yield s


def test_a_route_default_cap_reaches_the_model_and_bounds_the_reservation(
    capped_stack: Stack,
) -> None:
    within_one_minute(30)
    c = client(capped_stack, "2000/m")
    capped = chat(c)  # names no cap: extauthz adds max_tokens: 2 on its way to the model
    assert capped.parse().usage.completion_tokens == 2
    assert capped.parse().choices[0].message.content == "demo-small heard"
    assert int(capped.headers["x-ratelimit-remaining-tokens"]) < 2000 - 2 - len(PROMPT)
    own = chat(c, max_tokens=3)  # names its own: left as it is
    assert own.parse().usage.completion_tokens == 3
    unset = chat(c, extra_body={"max_tokens": None})  # null is no cap: the default replaces it
    assert unset.parse().usage.completion_tokens == 2
    streamed = list(
        c.chat.completions.create(
            model="demo-small", messages=[{"role": "user", "content": PROMPT}], stream=True
        )
    )  # both edits at once: the cap, and the usage chunk asked for and taken out
    assert "".join(x.choices[0].delta.content or "" for x in streamed) == "demo-small heard"
    assert all(x.usage is None for x in streamed)
