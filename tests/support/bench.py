"""Running a benchmark of bench/ as its smoke tests do."""

from __future__ import annotations

import subprocess
import sys

from tests.support.procs import REPO


def run_bench(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`bench/<script>` with `args`, which must exit 0 (its stderr's end shown if not)."""
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result
