"""The LLM benchmarks run end to end and report their figures (values are not asserted
here: figures come from bench/, never from a timed test). A file apart from
test_bench_smoke.py, so that the two run on two workers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.bench import run_bench

pytestmark = [pytest.mark.redis, pytest.mark.envoy]


def test_llm_body_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "llm.json"
    result = run_bench("llm_body.py", "--calls", "200", "--rounds", "1", "--json", str(out))
    assert "| LLM Check, 100 KB body |" in result.stdout
    data = json.loads(out.read_text())
    assert data["request_bytes"]["LLM Check, 100 KB body"] > 100_000  # the body is really sent


def test_llm_stream_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "stream.json"
    run_bench(
        "llm_stream.py", "--rounds", "1", "--streams", "2", "--chunks", "32", "--sizes", "1,50",
        "--concurrent", "4", "--responses", "10", "--probes", "30", "--json", str(out),
    )  # fmt: skip
    data = json.loads(out.read_text())
    assert {row["chunks"] for row in data["p50"].values()} == {32}
    assert data["paced"]["chunks_per_second_ratio"] > 0
    assert set(data["extauthz_cpu_us_per_response_by_chunks"]) == {"1", "50"}
    assert data["unrelated_request_ms"]["streams_completed"] > 0


def test_llm_scale_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    run_bench("llm_scale.py", "--streams", "10", "--chunks", "10", "--json", str(out))
    data = json.loads(out.read_text())
    assert data["ok"] == 10 and data["counted_exactly"], data
