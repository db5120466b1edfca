"""The soak mode, 4 seconds: steady load with a credential mix and policy syncs under load
(`python bench/soak.py --minutes 10` is the long soak; this proves the mode works)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.procs import REPO, require_binary

pytestmark = [pytest.mark.redis, pytest.mark.envoy]


def test_soak_four_seconds(tmp_path: Path) -> None:
    require_binary("redis-server")
    require_binary("envoy")
    out = tmp_path / "soak.json"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench/soak.py"),
            "--minutes",
            "0.07",
            "--sync-every",
            "1.5",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    data = json.loads(out.read_text())
    assert result.returncode == 0, json.dumps(data, indent=2)
    assert data["ok"] and data["requests"] > 1000 and data["policy_syncs"] >= 2
    assert data["mismatches"] == data["non_designed"] == data["errors"] == 0
    assert all(growth < 0.10 for growth in data["rss_growth"].values())
