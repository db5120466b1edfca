"""The order the suite's modules are handed to pytest-xdist's workers in (`--dist loadfile`
gives each module whole to one worker, in the order collected): the longest first, so that
what is left at the end is short modules that the workers share, not a long one that one
worker runs alone while the others wait."""

from __future__ import annotations

import pytest

# the modules that take longest (seconds on a loaded 2-core machine: 85, 55, 55, 52, 50, ...)
LONGEST_FIRST = (
    "integration/test_redis_topologies.py",
    "integration/test_hostile_inputs.py",
    "integration/test_admin_api.py",
    "integration/test_cache.py",
    "integration/test_bench_smoke.py",
    "integration/test_token_limits_e2e.py",
    "integration/test_workers.py",
    "integration/test_grpc_check.py",
    "integration/test_llm_counting.py",
    "integration/test_webhooks.py",
    "integration/test_console.py",
    "integration/test_bench_smoke_llm.py",
    "integration/test_token_lifecycle.py",
    "integration/test_rate_limits.py",
    "integration/test_doc_blocks.py",
    "integration/test_cli.py",
)
_RANK = {name: rank for rank, name in enumerate(LONGEST_FIRST)}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest modules first; the rest, and each module's tests, in their own order."""
    items.sort(key=lambda item: _RANK.get(_module(item), len(LONGEST_FIRST)))


def _module(item: pytest.Item) -> str:
    return f"{item.path.parent.name}/{item.path.name}"
