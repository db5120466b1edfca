"""A private redis-server for a benchmark: a free loopback port, no persistence, a temporary
directory; stopped on exit."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from extauthz.dev.ports import free_port, wait_port


@contextmanager
def private_redis(prefix: str) -> Iterator[tuple[int, Path]]:
    """Start one, yield its port and its directory (the benchmark may write files there);
    SystemExit with the fix when redis-server is missing."""
    redis_bin = shutil.which("redis-server")
    if redis_bin is None:
        raise SystemExit("bench: redis-server not found (apt-get install redis-server)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        proc = subprocess.Popen(
            [redis_bin, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", tmp],
            stdout=subprocess.DEVNULL,
        )
        try:
            wait_port(port)
            yield port, Path(tmp)
        finally:
            proc.terminate()
            proc.wait()
