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
    """Every server and Envoy listener starts and answers (bench/run.py checks each before it
    measures); four measurements run, with wrk through Envoy and h2load at the server, and
    the figures made of them are reported."""
    require_binary("redis-server")
    require_binary("envoy")
    out = tmp_path / "bench.json"
    measured = ["envoy_extauthz_warm", "envoy_extauthz_nocache", "direct_floor_1w"]
    measured.append("direct_extauthz_1w")
    result = run_bench(
        "run.py", "--duration", "1", "--rounds", "1", "--json", str(out), "--only", *measured
    )
    data = json.loads(out.read_text())
    assert [r["name"] for r in data["results"]] == measured
    assert all(r["rps"] > 0 for r in data["results"])
    nocache = next(r for r in data["results"] if r["name"] == "envoy_extauthz_nocache")
    assert nocache["redis_per_decision"] >= 0.9  # the cache really is off there: one HGETALL each
    assert [f["figure"] for f in data["figures"]] == [
        "warm / floor, direct, 1 worker",
        "warm / cache disabled, through Envoy",
        "Redis commands per warm decision",
    ]
    assert "| figure" in result.stdout


def test_token_bench_quick_smoke(tmp_path: Path) -> None:
    require_binary("redis-server")
    out = tmp_path / "tokens.json"
    result = run_bench(
        "tokens.py",
        "--sizes",
        "20",
        "100",
        "--import-size",
        "50",
        "--repeat",
        "1",
        "--json",
        str(out),
    )
    data = json.loads(out.read_text())
    assert [row["size"] for row in data["sizes"]] == [20, 100]
    assert all(row[key] > 0 for row in data["sizes"] for key in ("show", "list_json_peak_mb"))
    assert data["import"]["count"] == 50
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
    # (one server: each is a half-minute start under valgrind)
    run_bench("instructions.py", "--calls", "30", "--servers", "extauthz_on", "--json", str(out))
    data = json.loads(out.read_text())
    counts = data["instructions_per_call"]
    assert set(counts) == {"extauthz_on"} and data["bare_over"] == {}
    # a gRPC call is hundreds of thousands of instructions: the count is real, not 0
    assert counts["extauthz_on"] > 100_000, counts


def test_decision_path_bench_smoke() -> None:
    result = run_bench("decision_path.py", "--calls", "300", "--rounds", "1")
    assert "| whole handler, limit + usage |" in result.stdout
    # what --instructions runs under callgrind, once a stage (there a half-minute valgrind
    # start each; test_instruction_count_bench_smoke proves callgrind's counting)
    run_bench("decision_path.py", "--stage", "limited+usage:limit", "--calls", "10")


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
