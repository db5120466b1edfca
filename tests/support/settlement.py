"""Waiting for LLM responses to be settled in a local stack: a response's record is claimed
in batches about a second apart (later on a loaded machine), and its tokens show in
extauthz's metrics once it is settled."""

from __future__ import annotations

import time

from extauthz.dev.stack import Stack
from tests.support.metrics import scrape


def tokens_counted(stack: Stack) -> float:
    """The LLM tokens extauthz's metrics show counted from responses (they move once a
    response's record is settled; refusals before the model add none)."""
    text = scrape(stack.settings.metrics_listen)
    prefix = "extauthz_llm_tokens_total{"
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


def settled(stack: Stack, before: float, used: float = 0, timeout: float = 20) -> None:
    """Wait until the responses since `tokens_counted` was `before` are settled: `used`
    tokens more counted (any more when 0). A caller waits for every counted response, so
    that none is left over to be taken for the next one's."""
    deadline = time.monotonic() + timeout
    while (now := tokens_counted(stack)) < before + used or now == before:
        assert time.monotonic() < deadline, f"{now - before} of {used} tokens settled"
        time.sleep(0.05)
