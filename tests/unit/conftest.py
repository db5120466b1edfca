from __future__ import annotations

import fakeredis
import pytest

from extauthz.storage.store import Store


@pytest.fixture
def store() -> Store:
    return Store(fakeredis.FakeRedis(decode_responses=True), "extauthz:")
