"""Teams through the real Envoy, extauthz and Redis: a team's limits pooled across its
tokens (requests and LLM tokens), the models both a token and its team allow, and a change
to the team seen by every request within a second, as a revocation is."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from extauthz.admin import teams, tokens
from extauthz.config import Settings
from extauthz.core.rate_limit import RateLimit
from extauthz.core.token_limit import TokenLimit
from extauthz.dev.stack import Stack
from tests.support.procs import local_stack, wait_for
from tests.support.settlement import settled, tokens_counted

pytestmark = [pytest.mark.redis, pytest.mark.envoy]

CALL_TOKENS = 6  # what the demo server counts for `_chat`: 2 prompt + 4 completion


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    settings = Settings(usage_flush=0.5, auth_failure_burst=0)
    with local_stack(tmp_path_factory.mktemp("teams"), settings) as s:
        yield s


def _client(stack: Stack, token: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{stack.external_url}/v1", api_key=token, max_retries=0, timeout=10
    )


def _chat(c: openai.OpenAI, model: str = "demo-small") -> Any:
    messages: Any = [{"role": "user", "content": "hello there"}]
    return c.chat.completions.with_raw_response.create(
        model=model, messages=messages, max_tokens=20
    )


def _status(c: openai.OpenAI, model: str = "demo-small") -> int:
    try:
        return int(_chat(c, model).status_code)
    except openai.APIStatusError as e:
        return int(e.status_code)


def _member(stack: Stack, team: str, **kw: Any) -> openai.OpenAI:
    made = tokens.create(stack.store(), ["llm"], now=time.time(), team=team, **kw)
    return _client(stack, made.token)


def test_a_teams_request_limit_is_pooled_across_its_tokens(stack: Stack) -> None:
    left = 3600 - time.time() % 3600
    if left < 30:  # (an hourly window that ends mid-test would start afresh)
        time.sleep(left + 0.1)
    teams.create(stack.store(), "pool", rate_limit=RateLimit(4, "h"), now=time.time())
    one, two, outside = (
        _member(stack, "pool"),
        _member(stack, "pool"),
        _client(stack, tokens.create(stack.store(), ["llm"], now=time.time()).token),
    )
    before = tokens_counted(stack)
    statuses = [_status(c) for c in (one, two, one, two, one, two)]
    assert statuses == [200, 200, 200, 200, 429, 429]
    assert _status(outside) == 200  # (not in the team: not its limit)
    settled(stack, before, 5 * CALL_TOKENS)  # (nothing left to settle in the next test)


def test_a_teams_token_limit_is_pooled_and_its_models_apply(stack: Stack) -> None:
    within = 60 - time.time() % 60
    if within < 20:
        time.sleep(within + 0.1)
    teams.create(
        stack.store(),
        "llm-pool",
        models=["demo-small"],
        token_limit=TokenLimit(200, "m"),
        now=time.time(),
    )
    one, two = _member(stack, "llm-pool"), _member(stack, "llm-pool")
    assert _status(one, "demo-large") == 403  # (the route serves it; the team does not)
    before = tokens_counted(stack)
    first = _chat(one)
    remaining = int(first.headers["x-ratelimit-remaining-tokens"])
    assert remaining < 200
    settled(stack, before, CALL_TOKENS)  # (its reservation settled)
    # the other token of the team sees what the first used (pooled, not per token)
    second = _chat(two)
    assert int(second.headers["x-ratelimit-remaining-tokens"]) < remaining
    # the pool spent (6 tokens a call, a bound of ~110 reserved each): refused for both
    statuses = [_status(c) for c in [one, two] * 30]
    assert 429 in statuses
    assert statuses[statuses.index(429) + 1 :].count(200) <= 1  # (then the other too)


def test_a_change_to_the_team_is_seen_within_a_second(stack: Stack) -> None:
    teams.create(stack.store(), "moving", now=time.time())
    member = _member(stack, "moving")
    assert _status(member) == 200
    started = time.monotonic()
    teams.update(stack.store(), "moving", models=["demo-large"])
    wait_for(lambda: _status(member) == 403, 1.0, "the team's new models applied")
    teams.update(stack.store(), "moving", models=None)
    wait_for(lambda: _status(member) == 200, 1.0, "the team's models lifted")
    # the team deleted by hand (its tokens remain): every request is refused
    stack.store().client.delete("extauthz:team:moving")
    wait_for(lambda: _status(member) == 403, 1.0, "an unknown team refused")
    assert time.monotonic() - started < 10
