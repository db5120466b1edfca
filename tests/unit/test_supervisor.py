"""The supervisor's pieces that need no running workers (those are in test_workers.py)."""

from __future__ import annotations

import dataclasses
import json
import socket

import pytest

from extauthz.config import Settings
from extauthz.errors import ConfigError
from extauthz.runtime.supervisor import check_port_free, default_workers


def test_a_busy_port_is_refused_before_any_worker_starts() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            check_port_free(f"127.0.0.1:{port}")
    check_port_free(f"127.0.0.1:{port}")  # free again


def test_workers_default_to_the_cpus_we_may_use() -> None:
    assert default_workers() >= 1


def test_settings_travel_to_workers_whole() -> None:
    # what the supervisor writes on a worker's stdin, and the worker reads back
    settings = Settings(redis_url="redis://:pw@h:1/0", workers=3, disable_auth=True, tls_key="k")
    payload = json.dumps(dataclasses.asdict(settings))
    assert Settings(**json.loads(payload)) == settings
