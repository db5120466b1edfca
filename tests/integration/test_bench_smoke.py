"""bench/run.py runs end to end and reports every figure (values are not asserted here:
figures come from bench/, never from a timed test)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.bench import run_bench
from tests.support.procs import require_binary

pytestmark = [pytest.mark.redis, pytest.mark.envoy]


def test_bench_quick_smoke(tmp_path: Path) -> None:
    require_binary("redis-server")
    require_binary("envoy")
    out = tmp_path / "bench.json"
    result = run_bench("run.py", "--duration", "1", "--rounds", "1", "--json", str(out))
    data = json.loads(out.read_text())
    names = {r["name"] for r in data["results"]}
    assert {
        "envoy_noauth",
        "envoy_api_key_auth",
        "envoy_floor",
        "envoy_extauthz_warm",
        "envoy_extauthz_nocache",
        "direct_limited_1w",
        "direct_nousage_1w",
        "direct_bare_1w",
        "envoy_bare_workers",
        "envoy_limited_workers",
        "envoy_extauthz_nousage_workers",
    } <= names
    assert all(r["rps"] > 0 for r in data["results"])
    nocache = next(r for r in data["results"] if r["name"] == "envoy_extauthz_nocache")
    assert nocache["redis_per_decision"] >= 0.9  # the cache really is off there: one HGETALL each
    assert len(data["figures"]) == 19
    assert "| figure" in result.stdout


def test_token_bench_quick_smoke(tmp_path: Path) -> None:
    require_binary("redis-server")
    out = tmp_path / "tokens.json"
    result = run_bench(
        "tokens.py",
        "--sizes",
        "50",
        "500",
        "--import-size",
        "200",
        "--repeat",
        "1",
        "--json",
        str(out),
    )
    data = json.loads(out.read_text())
    assert [row["size"] for row in data["sizes"]] == [50, 500]
    assert all(row[key] > 0 for row in data["sizes"] for key in ("show", "list_json_peak_mb"))
    assert data["import"]["count"] == 200
    assert "| show |" in result.stdout


def test_sizing_bench_smoke(tmp_path: Path) -> None:
    require_binary("redis-server")
    out = tmp_path / "sizing.json"
    result = run_bench("sizing.py", "--tokens", "200", "--models", "2", "--json", str(out))
    data = json.loads(out.read_text())
    assert data["tokens"] == 200
    assert data["audit_events"] == 202  # the sync, 200 tokens and one with every LLM field
    assert all(data[key] > 0 for key in ("per_token", "per_token_day", "per_token_first_day"))
    assert "per token used on a UTC day" in result.stdout


def test_instruction_count_bench_smoke(tmp_path: Path) -> None:
    require_binary("redis-server")
    require_binary("valgrind")
    out = tmp_path / "instructions.json"
    # (two of the four servers: each is a half-minute start under valgrind)
    run_bench("instructions.py", "--calls", "30", "--servers", "extauthz_on", "--json", str(out))
    data = json.loads(out.read_text())
    counts = data["instructions_per_call"]
    assert set(counts) == {"bare", "extauthz_on"}
    # a gRPC call is hundreds of thousands of instructions: the count is real, not 0
    assert all(count > 100_000 for count in counts.values()), counts


def test_decision_path_bench_smoke() -> None:
    require_binary("valgrind")
    result = run_bench("decision_path.py", "--calls", "300", "--rounds", "1")
    assert "| whole handler, limit + usage |" in result.stdout
    # one stage counted under callgrind, as --instructions counts each (one run: each is a
    # half-minute valgrind start; parsing a request is ~10,600 instructions, the empty
    # stage ~1,000)
    from bench.decision_path import instructions

    assert instructions("plain", "parse", 10) > 3_000


def test_teams_bench_smoke(tmp_path: Path) -> None:
    require_binary("redis-server")
    out = tmp_path / "teams.json"
    result = run_bench(
        "teams.py", "--sizes", "5,50", "--members", "5", "--repeat", "2", "--json", str(out)
    )
    data = json.loads(out.read_text())
    assert [row["teams"] for row in data["rows"]] == [6, 51]  # (and the measured team)
    assert all(row[key] > 0 for row in data["rows"] for key in ("show", "members", "usage"))
    assert "time ratios" in result.stdout
