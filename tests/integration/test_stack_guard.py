"""`extauthz up` never touches another stack: an odd lock file is one line, and a Redis that
another stack bound first (started at the same moment) is never written to."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from extauthz.dev.stack import LOCK_FILE, Stack, StateLock, free_base_port
from extauthz.errors import StackError
from tests.support.procs import REPO, RedisServer, require_binary


@pytest.mark.parametrize("kind", ["fifo", "directory", "dangling symlink", "symlink"])
def test_a_lock_file_that_is_not_a_regular_file_is_refused_in_one_line(
    tmp_path: Path, kind: str
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    lock = state / LOCK_FILE
    target = tmp_path / "elsewhere"
    if kind == "fifo":
        os.mkfifo(lock)
    elif kind == "directory":
        lock.mkdir()
    elif kind == "dangling symlink":
        lock.symlink_to(target)
    else:
        target.write_text("1 2\n")
        lock.symlink_to(target)
    with pytest.raises(StackError) as refused:
        StateLock(state, free_base_port())
    assert "\n" not in str(refused.value) and str(lock) in str(refused.value)
    assert kind != "dangling symlink" or not target.exists()  # (never created through it)


@pytest.mark.redis
def test_a_redis_another_stack_bound_first_is_never_written_to(tmp_path: Path) -> None:
    require_binary("envoy")
    stack = Stack(free_base_port(), tmp_path / "mine", REPO / "examples/policy.yaml")
    other = RedisServer(tmp_path, port=stack.redis_port)  # bound between check and start
    other.start()
    try:
        with pytest.raises(StackError, match=f"port {stack.redis_port} .*another redis-server"):
            stack.start_redis()
        assert other.cli("DBSIZE") == "0"  # nothing synced into it
    finally:
        stack.stop()
        other.stop()
