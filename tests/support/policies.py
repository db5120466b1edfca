"""A synced policy for tests that mint tokens: token create refuses routes it does not have."""

from __future__ import annotations

from collections.abc import Iterable

from extauthz.core.policy import PolicySnapshot, parse_policy
from extauthz.storage.store import Store


def publish_routes(store: Store, *routes: str, llm: Iterable[str] = ()) -> None:
    """Publish a policy of protected `routes`, and of LLM routes `llm` (api: openai), as
    `extauthz sync` would (version 1, replacing any policy there)."""
    lines = [f"  {name}: {{access: protected}}" for name in routes]
    lines += [f"  {name}: {{access: protected, api: openai}}" for name in llm]
    parsed = parse_policy("version: 1\nroutes:\n" + "\n".join(lines) + "\n")
    store.update_policy(lambda _: PolicySnapshot(1, parsed.routes))
