"""Counting over Envoy's ext_proc filter, as gateways that run it do
(docs/llm.md#tokens-counted-from-responses), through the real Envoy and extauthz against the
demo server: the generated ext_proc config (`envoy_config --counting ext-proc`) and a counting
filter written the way gateways generate one (not observability mode, request headers skipped),
which must count too."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from extauthz.admin import tokens
from extauthz.config import Settings
from extauthz.core.token_limit import TokenLimit
from extauthz.dev.envoy_config import EXT_PROC_FILTER
from extauthz.dev.stack import Stack
from tests.support.procs import envoy_in_front, local_stack, wait_for

pytestmark = [pytest.mark.redis, pytest.mark.envoy]


def as_gateways_write_it(config: dict[str, Any]) -> dict[str, Any]:
    """The counting ext_proc filter as a gateway may generate it: not observability mode,
    request headers skipped, every message answered."""
    out = copy.deepcopy(config)
    for listener in out["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for network_filter in chain["filters"]:
                for http in network_filter["typed_config"].get("http_filters", []):
                    if http["name"] == EXT_PROC_FILTER:
                        settings = http["typed_config"]
                        settings.pop("observability_mode")
                        settings.pop("deferred_close_timeout")
                        settings["processing_mode"]["request_header_mode"] = "SKIP"
    return out


@pytest.fixture(scope="module", params=["generated", "as-gateways-write-it"])
def gateway(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, int]]:
    work = tmp_path_factory.mktemp("ext-proc")
    edit = as_gateways_write_it if request.param == "as-gateways-write-it" else None
    with (
        local_stack(work / "stack", Settings(auth_failure_burst=0, usage_flush=0.2)) as stack,
        envoy_in_front(stack, work, counting="ext-proc", edit=edit) as external,
    ):
        yield stack, external


def test_ext_proc_counts_edits_and_settles(gateway: tuple[Stack, int]) -> None:
    stack, port = gateway
    made = tokens.create(
        stack.store(), ["llm"], now=time.time(), token_limit=TokenLimit(1_000_000, "h")
    )
    c = openai.OpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key=made.token, max_retries=0, timeout=10
    )
    messages: Any = [{"role": "user", "content": "count these five words"}]
    plain = c.chat.completions.create(model="demo-small", messages=messages)
    # no cap named: one is written into the body; no usage asked: asked, and taken out
    silent = list(c.chat.completions.create(model="demo-small", messages=messages, stream=True))
    assert silent and all(chunk.usage is None for chunk in silent)
    assert plain.usage is not None

    def charged() -> dict[str, Any]:
        day = tokens.usage(stack.store(), made.record.id, 1, time.time())["days"][0]
        return dict(day.get("models", {}).get("demo-small", {}))

    expected = {
        "requests": 2,
        "prompt_tokens": 2 * plain.usage.prompt_tokens,
        "completion_tokens": 2 * plain.usage.completion_tokens,
        # (the example policy prices demo-small at $1,000 and $2,000 per million tokens)
        "cost_usd": 2
        * (plain.usage.prompt_tokens * 1000 + plain.usage.completion_tokens * 2000)
        / 1e6,
    }
    wait_for(lambda: charged() == expected, 10, "both responses counted")
