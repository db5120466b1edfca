from __future__ import annotations

import fakeredis
import pytest

from extauthz.storage.client import DECODING
from extauthz.storage.store import Store


@pytest.fixture
def store() -> Store:
    return Store(fakeredis.FakeRedis(**DECODING), "extauthz:")  # (as the real client's)
