"""Money budgets through the real Envoy, extauthz and Redis (docs/llm.md#budgets-in-dollars):
the README's worked example, the 429 before the model with Retry-After, the USD left on
allowed responses, an unpriced model refused, and what responses cost in usage and metrics.

The example policy prices demo-small at $1,000 per million input and $2,000 per million
output tokens; the demo server answers 21 prompt + 4 completion tokens: $0.029 a call."""

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
from extauthz.core.budget import Budget
from extauthz.dev.stack import Stack
from tests.support.metrics import scrape
from tests.support.procs import local_stack, wait_for
from tests.support.readme import readme_block
from tests.support.settlement import settled, tokens_counted

pytestmark = [pytest.mark.redis, pytest.mark.envoy]

PROMPT = " ".join(["word"] * 21)
CALL_COST = 21 * 1000 + 4 * 2000  # micro-dollars


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    settings = Settings(usage_flush=0.5, auth_failure_burst=0)
    with local_stack(tmp_path_factory.mktemp("budgets"), settings) as s:
        yield s


def client(stack: Stack, budget: str) -> tuple[openai.OpenAI, str]:
    made = tokens.create(stack.store(), ["llm"], now=time.time(), budget=Budget.parse(budget))
    c = openai.OpenAI(
        base_url=f"{stack.external_url}/v1", api_key=made.token, max_retries=0, timeout=10
    )
    return c, made.record.id


def chat(c: openai.OpenAI, model: str = "demo-small", **extra: Any) -> Any:
    messages: Any = [{"role": "user", "content": PROMPT}]
    return c.chat.completions.with_raw_response.create(model=model, messages=messages, **extra)


def within_one_minute(needed: float) -> None:
    left = 60 - time.time() % 60
    if left < needed:
        time.sleep(left + 0.05)


def test_readme_budget_example(stack: Stack) -> None:
    """The README's worked example, run as written against the stack's ports ($CHAT from the
    token-limit block before it)."""
    within_one_minute(20)
    chat_line = next(
        line for line in readme_block("token-limit").splitlines() if line.startswith("CHAT=")
    )
    block = chat_line + "\n" + readme_block("budget")
    block = block.replace("127.0.0.1:10000", f"127.0.0.1:{stack.ports.external.port}")
    block = block.replace("127.0.0.1:10004", f"127.0.0.1:{stack.redis_port}")
    codes = [m.group(1) for m in re.finditer(r"# (\d{3})", block)]
    assert codes == ["200", "200", "429"]
    path = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    before = tokens_counted(stack)
    out = subprocess.run(
        ["bash", "-ec", block], capture_output=True, text=True, env={"PATH": path}, check=False
    )
    assert out.stdout.split() == codes, out.stderr
    settled(stack, before, 50)  # (nothing left to settle in the next test)


def test_a_spent_budget_is_429_before_the_model_and_the_usd_left_is_told(stack: Stack) -> None:
    within_one_minute(20)
    probe, _ = client(stack, "1000/m")
    before = tokens_counted(stack)
    first = chat(probe, max_tokens=10)
    settled(stack, before)
    reserve = 1000_000_000 - round(float(first.headers["x-extauthz-budget-remaining"]) * 1e6)
    assert reserve > CALL_COST  # (the bound, priced: body bytes x $1,000 + 10 x $2,000)
    c, token_id = client(stack, f"${(reserve + CALL_COST + 1000) / 1e6:.6f}/m")
    answers = []
    for _ in range(2):
        before = tokens_counted(stack)
        answers.append(chat(c, max_tokens=10))
        settled(stack, before)  # (the response settled before the next call)
    left = [float(a.headers["x-extauthz-budget-remaining"]) for a in answers]
    assert all(0 <= x <= (reserve + CALL_COST + 1000) / 1e6 for x in left)
    with pytest.raises(openai.RateLimitError) as refused:
        chat(c, max_tokens=10)
    response = refused.value.response
    assert response.json()["error"] == "budget_exhausted"
    assert 1 <= int(response.headers["retry-after"]) <= 60
    assert "budget $" in response.json()["message"]

    # what the responses cost, per model and day, once the usage is flushed
    def cost() -> float:
        days = tokens.usage(stack.store(), token_id, 1, time.time())["days"]
        return float(days[-1].get("models", {}).get("demo-small", {}).get("cost_usd", 0))

    wait_for(lambda: cost() >= 2 * CALL_COST / 1e6, 10, "the usage flushed")
    assert cost() == pytest.approx(2 * CALL_COST / 1e6)


def test_an_unpriced_model_under_a_budget_is_403(stack: Stack) -> None:
    c, _ = client(stack, "5/d")
    with pytest.raises(openai.PermissionDeniedError) as refused:
        chat(c, model="demo-large", max_tokens=10)
    assert refused.value.response.json()["error"] == "model_unpriced"
    # a token without a budget calls it as before
    plain = tokens.create(stack.store(), ["llm"], now=time.time()).token
    free = openai.OpenAI(base_url=f"{stack.external_url}/v1", api_key=plain, max_retries=0)
    assert chat(free, model="demo-large", max_tokens=10).parse().usage.total_tokens > 0


def test_a_request_that_alone_costs_more_than_the_budget_is_413(stack: Stack) -> None:
    c, _ = client(stack, "0.01/d")  # the bound of any chat costs more than a cent here
    with pytest.raises(openai.APIStatusError) as refused:
        chat(c, max_tokens=10)
    assert refused.value.status_code == 413
    assert "retry-after" not in refused.value.response.headers
    assert refused.value.response.json()["error"] == "request_too_large"


def test_what_responses_cost_is_a_prometheus_counter(stack: Stack) -> None:
    c, _ = client(stack, "100/d")
    chat(c, max_tokens=10)

    def counted() -> float:
        text = scrape(stack.settings.metrics_listen)
        found = re.search(
            r'^extauthz_llm_cost_usd_total\{model="demo-small",route="llm"\} (\S+)$', text, re.M
        )
        return float(found.group(1)) if found else 0.0

    wait_for(lambda: counted() >= CALL_COST / 1e6, 10, "the cost counted")
