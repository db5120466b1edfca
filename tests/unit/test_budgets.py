"""Money budgets: prices, the `AMOUNT/UNIT` notation, what a request reserves and a response
is charged, and the limiter's promise that a window's spend never passes its budget."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from hypothesis import given
from hypothesis import strategies as st

from extauthz.admin import tokens
from extauthz.admin.token_files import export_lines, plan_import, read_import_file
from extauthz.core.budget import Budget
from extauthz.core.credentials import token_hash
from extauthz.core.decision import Decision, Outcome, RequestFacts, decide
from extauthz.core.limits import MONEY, TOKENS, Limited
from extauthz.core.llm import read_model_request
from extauthz.core.llm_usage import Usage
from extauthz.core.policy import PolicySnapshot, parse_policy
from extauthz.core.prices import FREE, Price, PriceTable, litellm_prices
from extauthz.core.rate_limit import ZeroLimit
from extauthz.core.team_record import TeamRecord
from extauthz.core.token_limit import TokenLimit
from extauthz.core.token_record import TokenRecord
from extauthz.errors import InvalidValue, MalformedRecord, PolicyError
from extauthz.runtime.limiter import BUDGET_HEADER, METADATA_KEY, Limiter
from extauthz.storage.client import DECODING
from extauthz.storage.store import Store
from tests.support.policies import publish_routes

START = 1_800_000_000.0  # an aligned hour
FIXTURE = Path(__file__).parent.parent / "fixtures" / "litellm_prices.json"
MINI = Price(150_000, 600_000, 75_000)  # gpt-4o-mini: 0.15, 0.60, 0.075 USD per million


# --- notation and prices -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "count", "shown"),
    [("50/mo", 50_000_000, "$50/mo"), ("$0.25/h", 250_000, "$0.25/h"),
     ("5/d", 5_000_000, "$5/d"), ("0.000001/h", 1, "$0.000001/h"),
     ("1000000000/mo", 10**15, "$1000000000/mo"), (" $7.50/d ", 7_500_000, "$7.5/d")],
)  # fmt: skip
def test_budget_notation(text: str, count: int, shown: str) -> None:
    budget = Budget.parse(text)
    assert (budget.count, str(budget)) == (count, shown)
    assert Budget.parse(str(budget)) == budget  # (what counters and metadata carry)


@pytest.mark.parametrize(
    "text",
    ["", "50", "50/s", "50/w", "-1/d", "+1/d", "1e3/d", "1.0000001/d", "$$5/d",
     "5 /d", "٣/d", "1_000/d", "1000000001/d", "NaN/d", "inf/d", "5/d\x00", "5/mo/d", "0x10/d",
     "9" * 5000 + "/d", "1,5/d", ".5/d", "5./d"],
)  # fmt: skip
def test_budget_notation_refused(text: str) -> None:
    with pytest.raises(ValueError, match="AMOUNT/UNIT"):
        Budget.parse(text)


@pytest.mark.parametrize("text", ["0/d", "$0.000000/mo", "000/h"])
def test_a_zero_budget_is_refused_saying_what_it_would_mean(text: str) -> None:
    with pytest.raises(ZeroLimit, match="0 would refuse every priced request"):
        Budget.parse(text)
    with pytest.raises(InvalidValue) as info:
        tokens.parse_budget(text)
    assert info.value.field == "budget" and "give none" in info.value.rule


def test_costs_price_cached_tokens_apart_and_never_twice() -> None:
    # 1,000 prompt tokens of which 400 cached, 100 completion:
    # 600 x 0.15 + 400 x 0.075 + 100 x 0.60 = 90 + 30 + 60 = 180 micro-dollars
    assert MINI.cost(1000, 100, 400) == 180
    assert MINI.cost(1000, 100, 0) == 210
    assert MINI.cost(10, 0, 10**6) == MINI.cost(10, 0, 10)  # cached beyond the prompt: no credit
    assert MINI.cost(10, 0, -5) == MINI.cost(10, 0, 0)
    assert MINI.cost(1, 0) == 1  # rounded up: 0.15 micro-dollars is charged 1
    assert FREE.cost(10**9, 10**9) == FREE.reserve(10**9, 10**9) == 0


@given(
    st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**6),
    st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**6),
)  # fmt: skip
def test_the_charge_never_exceeds_the_reservation_while_usage_is_in_the_bound(
    inp: int, out: int, cached_price: int, prompt_bound: int, output_bound: int, a: int, b: int
) -> None:
    price = Price(inp, out, cached_price)
    prompt, completion = min(a, prompt_bound), min(b, output_bound)
    for cached in (0, prompt // 2, prompt):
        assert price.cost(prompt, completion, cached) <= price.reserve(prompt_bound, output_bound)


def test_a_price_table_finds_exact_names_first_then_the_longest_prefix() -> None:
    table = PriceTable(
        {"gpt-4o": Price(1, 1, 1), "gpt-*": Price(2, 2, 2), "gpt-4o-*": Price(3, 3, 3)}
    )
    assert table.of("gpt-4o") == Price(1, 1, 1)
    assert table.of("gpt-4o-mini") == Price(3, 3, 3)
    assert table.of("gpt-3.5") == Price(2, 2, 2)
    assert table.of("claude") is None
    assert table.of("claude") is None  # (remembered, still right)


def test_prices_in_the_policy_with_file_line_and_key() -> None:
    doc = parse_policy(
        "version: 1\nunpriced: free\nprices:\n"
        "  gpt-4o-mini: {input: 0.15, output: 0.60, cached_input: 0.075}\n"
        "  llama-*: {input: 0, output: 1}\n"
        "routes:\n  llm: {access: protected, api: openai, budget: $5/d}\n"
    )
    assert doc.prices.of("gpt-4o-mini") == MINI
    assert doc.prices.of("llama-3") == Price(0, 1_000_000, 0)  # cached_input: as input
    assert doc.prices.unpriced == "free"
    assert doc.routes["llm"].budget == Budget(5_000_000, "d")
    snapshot = PolicySnapshot(1, doc.routes, prices=doc.prices)
    assert PolicySnapshot.from_json(snapshot.to_json()) == snapshot
    plain = PolicySnapshot(1, doc.routes)
    assert "prices" not in json.loads(plain.to_json())  # (a snapshot without prices as before)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("prices:\n  m: {input: 1}\n", r":4: prices\.m\.output: missing"),
        ("prices:\n  m: {input: '1', output: 1}\n", r":4: prices\.m\.input: must be a number"),
        ("prices:\n  m: {input: 1e3, output: 1}\n", r":4: prices\.m\.input"),
        ("prices:\n  m: {input: -1, output: 1}\n", r":4: prices\.m\.input"),
        ("prices:\n  m: {input: .nan, output: 1}\n", r":4: prices\.m\.input"),
        ("prices:\n  m: {input: 0.1234567, output: 1}\n", r"at most 6 decimal places"),
        ("prices:\n  m: {input: 2000000, output: 1}\n", r":4: prices\.m\.input"),
        ("prices:\n  m: {input: 1, output: 1, reasoning: 2}\n", r":4: prices\.m\.reasoning"),
        ("prices:\n  'a*b': {input: 1, output: 1}\n", r":4: prices\.a\*b"),
        ("prices:\n  m: [1, 2]\n", r":4: prices\.m: must be a mapping"),
        ("prices: [1]\n", r":3: prices: must be a mapping"),
        ("unpriced: maybe\n", r":3: unpriced: deny .* or free"),
    ],
)
def test_bad_prices_name_file_line_and_key(text: str, where: str) -> None:
    with pytest.raises(PolicyError, match=where):
        parse_policy("version: 1\nroutes: {}\n" + text, "policy.yaml")


def test_a_route_budget_needs_an_llm_route_and_the_notation() -> None:
    with pytest.raises(PolicyError, match=r":5: routes\.r\.budget: only for a route with api"):
        parse_policy("version: 1\nroutes:\n  r:\n    access: protected\n    budget: 5/d\n")
    with pytest.raises(PolicyError, match=r":6: routes\.r\.budget: .*AMOUNT/UNIT"):
        parse_policy(
            "version: 1\nroutes:\n  r:\n    access: protected\n    api: openai\n    budget: 5/s\n"
        )


def test_litellm_cost_map_becomes_prices_per_million() -> None:
    table = json.loads(FIXTURE.read_text())
    found = litellm_prices(table, ["gpt-4o-mini", "claude-*"])
    assert found["gpt-4o-mini"] == {"input": "0.15", "output": "0.6", "cached_input": "0.075"}
    assert all(name.startswith(("gpt-4o-mini", "claude-")) for name in found)
    everything = litellm_prices(table)
    assert "sample_spec" not in everything
    assert "text-embedding-3-small" in everything  # (output 0: still both prices)
    assert not any("*" in name or "," in name for name in everything)
    # what it prints is what the policy reads
    lines = "".join(
        f"  {json.dumps(m)}: {{{', '.join(f'{k}: {v}' for k, v in p.items())}}}\n"
        for m, p in everything.items()
    )
    doc = parse_policy("version: 1\nroutes: {}\nprices:\n" + lines)
    assert doc.prices.of("gpt-4o-mini") == MINI


@pytest.mark.parametrize(
    "entry",
    [{"input_cost_per_token": "0.1", "output_cost_per_token": 1e-6},
     {"input_cost_per_token": -1e-6, "output_cost_per_token": 1e-6},
     {"input_cost_per_token": float("inf"), "output_cost_per_token": 1e-6},
     {"input_cost_per_token": True, "output_cost_per_token": 1e-6},
     {"input_cost_per_token": 1e-6}, [], "x", None],
)  # fmt: skip
def test_litellm_entries_without_believable_prices_are_left_out(entry: Any) -> None:
    assert litellm_prices({"m": entry}) == {}


def test_records_carry_a_budget_and_a_bad_one_is_malformed() -> None:
    record = TokenRecord.from_fields({"id": "t", "routes": "llm", "budget": "$5/d"})
    assert record.budget == Budget(5_000_000, "d")
    assert TokenRecord.from_fields(record.to_fields()) == record
    team = TeamRecord.from_fields("acme", {"budget": "500/mo"})
    assert team.to_json()["budget"] == "$500/mo"
    assert TeamRecord.from_fields("acme", team.to_fields()) == team
    for bad in ("lots", "5/s", "0/d", "\udcff", "5/d,6/d"):
        with pytest.raises(MalformedRecord, match="budget"):
            TokenRecord.from_fields({"id": "t", "routes": "llm", "budget": bad})


# --- the decision --------------------------------------------------------------------------

DOCUMENT = parse_policy(
    """
version: 1
prices:
  gpt-4o-mini: {input: 0.15, output: 0.60, cached_input: 0.075}
routes:
  llm:
    access: protected
    api: openai
    budget: $2/h
  open-llm:
    access: public
    api: openai
    budget: $1/d
"""
)
POLICY = PolicySnapshot(1, DOCUMENT.routes, prices=DOCUMENT.prices)
SECRET = "budget-secret"


def _decided(
    body: bytes, route: str = "llm", policy: PolicySnapshot = POLICY, **kw: Any
) -> Decision:
    record = TokenRecord("t1", frozenset({"*"}), frozenset(), **kw)
    facts = RequestFacts(route, authorization=f"Bearer {SECRET}", llm=read_model_request(body))
    return decide(facts, policy, lambda d: record if d == token_hash(SECRET) else None, START)


def test_a_budget_reserves_the_bound_at_the_models_prices() -> None:
    body = b'{"model": "gpt-4o-mini", "max_tokens": 100}'
    allow = _decided(body, budget=Budget(1_000_000, "d"))
    assert allow.outcome is Outcome.ALLOW
    assert [(t.kind, t.scope) for t in allow.limits] == [
        (MONEY, "token:t1"), (MONEY, "route:llm:tok:t1")
    ]  # fmt: skip
    assert allow.price == MINI
    assert (
        allow.cost
        == MINI.reserve(len(body), 100)
        == -(-(len(body) * 150_000 + 60_000_000) // 10**6)
    )
    assert allow.reserve == len(body) + 100


def test_an_unpriced_model_under_a_budget_is_403_unless_free() -> None:
    denied = _decided(b'{"model": "mystery", "max_tokens": 5}')
    assert (denied.status, denied.reason) == (403, "model_unpriced")
    assert "prices" in denied.body
    free = PolicySnapshot(1, DOCUMENT.routes, prices=PriceTable(DOCUMENT.prices.prices, "free"))
    allow = _decided(b'{"model": "mystery", "max_tokens": 5}', policy=free)
    assert allow.outcome is Outcome.ALLOW and (allow.price, allow.cost) == (FREE, 0)
    # no budget applies: no price needed
    plain = PolicySnapshot(
        1, parse_policy("version: 1\nroutes:\n  llm: {access: protected, api: openai}\n").routes
    )
    assert _decided(b'{"model": "mystery"}', policy=plain).outcome is Outcome.ALLOW


def test_a_request_whose_bound_costs_more_than_the_budget_is_413() -> None:
    # a cap of 10^6 output tokens at $0.60 per million is $0.60: over a $0.50 budget
    refused = _decided(
        b'{"model": "gpt-4o-mini", "max_tokens": 1000000}', budget=Budget(500_000, "d")
    )
    assert (refused.status, refused.reason) == (413, "request_too_large")
    assert "retry-after" not in dict(refused.headers)
    assert "$0.5/d" in refused.body and "may cost up to $0.6" in refused.body
    # no cap named: 4096 is added where a budget applies, and the request fits
    assert _decided(b'{"model": "gpt-4o-mini"}').outcome is Outcome.ALLOW


def test_a_public_route_budget_counts_per_address() -> None:
    facts = RequestFacts(
        "open-llm", source_address="10.9.8.7", llm=read_model_request(b'{"model": "gpt-4o-mini"}')
    )
    allow = decide(facts, POLICY, lambda d: None, START)
    assert [(t.kind, t.scope) for t in allow.limits] == [(MONEY, "route:open-llm:addr:10.9.8.7")]
    assert POLICY.routes["open-llm"].reads_source_address


def test_a_team_budget_is_pooled_in_the_team_scope() -> None:
    record = TokenRecord("t1", frozenset({"*"}), frozenset(), team="acme")
    team = TeamRecord("acme", budget=Budget(9_000_000, "mo"))
    facts = RequestFacts(
        "llm", authorization=f"Bearer {SECRET}", llm=read_model_request(b'{"model": "gpt-4o-mini"}')
    )
    allow = decide(
        facts, POLICY, lambda d: record if d == token_hash(SECRET) else None, START,
        teams=lambda team_id: team if team_id == "acme" else None,
    )  # fmt: skip
    assert ("team:acme", "$9/mo") in [(t.scope, str(t.limit)) for t in allow.limits]


# --- the limiter ---------------------------------------------------------------------------


def _store() -> Store:
    return Store(fakeredis.FakeRedis(**DECODING), "extauthz:")


def _allow(cost: int, *limits: Limited, price: Price = MINI, reserve: int = 1000) -> Decision:
    return Decision(
        Outcome.ALLOW, 200, "granted", limits=limits, reserve=reserve, cost=cost, price=price,
        model="gpt-4o-mini",
    )  # fmt: skip


DOLLAR = Limited(MONEY, "token:t1", Budget(1_000_000, "h"), "this token")


def test_admission_reserves_money_and_settlement_charges_the_priced_usage() -> None:
    store = _store()
    limiter = Limiter(store)
    answer = limiter.admit(_allow(600_000, DOLLAR), START + 1)
    assert answer.outcome is Outcome.ALLOW
    remaining = dict(answer.response_headers)[BUDGET_HEADER]
    assert 0 <= float(remaining) <= 0.4
    assert "x-ratelimit-remaining-tokens" not in dict(answer.response_headers)  # (no token limit)
    # a second one does not fit while the first is reserved
    second = limiter.admit(_allow(600_000, DOLLAR), START + 2)
    assert (second.status, second.reason) == (429, "budget_exhausted")
    assert 3598 - 1 <= int(dict(second.headers)["retry-after"]) <= 3599  # to the hour's end
    assert "budget $1/h of this token" in second.body
    # the first used 100,000 prompt tokens (40,000 cached) and 10,000 completion:
    # 60,000 x 0.15 + 40,000 x 0.075 + 10,000 x 0.6 = 9,000 + 3,000 + 6,000 = 18,000
    limiter.settle(
        dict(answer.metadata)[METADATA_KEY], Usage(100_000, 10_000, cached_tokens=40_000), START + 3
    )
    assert limiter.admit(_allow(600_000, DOLLAR), START + 4).outcome is Outcome.ALLOW
    limiter.sync(START + 5, final=True)
    counter = f"extauthz:bl:token:t1:h{int(START // 3600)}"
    assert int(store.client.get(counter)) == 18_000 + 600_000


def test_tokens_and_money_settle_each_from_the_same_usage() -> None:
    limiter = Limiter(_store())
    tokens_limit = Limited(TOKENS, "token:t1", TokenLimit(5000, "h"), "this token")
    answer = limiter.admit(_allow(500_000, DOLLAR, tokens_limit, reserve=3000), START + 1)
    headers = dict(answer.response_headers)
    assert {BUDGET_HEADER, "x-ratelimit-remaining-tokens"} <= set(headers)
    metadata = json.loads(dict(answer.metadata)[METADATA_KEY])
    assert (
        metadata[0] == 3000 and metadata[2] == 500_000 and metadata[4] == [150_000, 600_000, 75_000]
    )
    limiter.settle(json.dumps(metadata), Usage(1000, 1000), START + 2)
    # token budget: 3000 back, 2000 taken; money: 500,000 back, 150 + 600 = 750 taken
    again = limiter.admit(_allow(999_000, DOLLAR, tokens_limit, reserve=3000), START + 3)
    assert again.outcome is Outcome.ALLOW


@pytest.mark.parametrize(
    "metadata",
    [
        '[10, [], 5, [["bl:token:t1:h500000", "$1/h", 1800003600]], [1, 2]]',  # price: 2 values
        '[10, [], 5, [["bl:token:t1:h500000", "$1/h", 1800003600]], [1, 2, -3]]',
        '[10, [], 5, [["bl:token:t1:h500000", "$1/h", 1800003600]], [1, 2, 1e30]]',
        '[10, [], 5, [["tl:token:t1:h500000", "$1/h", 1800003600]], [1, 2, 3]]',  # wrong kind
        '[10, [], 2000000, [["bl:token:t1:h500000", "$1/h", 1800003600]], [1, 2, 3]]',  # > N
        '[10, [], -5, [["bl:token:t1:h500000", "$1/h", 1800003600]], [1, 2, 3]]',
        '[10, [], 5, [["bl:token:t1:h500001", "$1/h", 1800003600]], [1, 2, 3]]',  # not its window
        '[10, [], 5, [["bl:token:t1:h500000", "1/h", 1800003600]], [1, 2, 3]]',  # (reads as $1/h)
        "[10, [], 5]",
    ],
)
def test_unreadable_money_metadata_settles_nothing(metadata: str) -> None:
    limiter = Limiter(_store())
    limiter.settle(metadata, Usage(1, 1), START)
    if metadata.count("bl:token:t1:h500000") and '"1/h"' in metadata:
        return  # (a budget written without its $ is the same budget: settled, harmless)
    assert not limiter._budgets.items()


@pytest.mark.parametrize("seed", range(6))
def test_three_processes_never_overspend_a_budget_and_use_most_of_it(seed: int) -> None:
    """Bounded requests priced at gpt-4o-mini's prices from three limiters on one Redis,
    interleaved at random, twice the load a $1/h budget allows: the window's spend never
    passes $1.000000, and at least 80 % of it is used."""
    rng = random.Random(seed)  # noqa: S311 (a simulation)
    store = _store()
    procs = [Limiter(store) for _ in range(3)]
    in_flight: list[tuple[str, Usage, int]] = []
    spent = offered = 0
    now = START
    while offered < 2_000_000:  # (twice the budget, at the reservations' prices)
        now += 0.2
        if in_flight and rng.random() < 0.5:
            metadata, used, cost = in_flight.pop(rng.randrange(len(in_flight)))
            rng.choice(procs).settle(metadata, used, now)
            continue
        prompt_bound, cap = rng.randint(200, 2000), rng.randint(50, 1000)
        cost = MINI.reserve(prompt_bound, cap)
        offered += cost
        answer = rng.choice(procs).admit(_allow(cost, DOLLAR, reserve=prompt_bound + cap), now)
        if answer.outcome is Outcome.ALLOW:
            prompt = rng.randint(prompt_bound // 2, prompt_bound)
            completion = rng.randint(cap // 2, cap)
            used = Usage(prompt, completion, cached_tokens=rng.randint(0, prompt // 4))
            charge = MINI.cost(used.prompt_tokens, used.completion_tokens, used.cached_tokens)
            spent += charge
            in_flight.append((dict(answer.metadata)[METADATA_KEY], used, charge))
        if rng.random() < 0.05:
            rng.choice(procs).sync(now)
    assert now < START + 3600
    assert spent <= 1_000_000
    assert spent >= 0.8 * 1_000_000, spent


# --- where a budget is set -----------------------------------------------------------------


def test_budget_through_create_update_export_import(tmp_path: Path) -> None:
    store = _store()
    publish_routes(store, "plain", llm=["llm"])
    made = tokens.create(store, ["llm"], budget=Budget(5_000_000, "d"), now=START)
    assert made.record.budget == Budget(5_000_000, "d")
    changed = tokens.update(store, made.record.id, budget=None, now=START)
    assert changed.record.budget is None
    changed = tokens.update(store, made.record.id, budget=tokens.parse_budget("$2.5/h"), now=START)
    assert str(changed.record.budget) == "$2.5/h"
    lines = list(export_lines(store))
    assert json.loads(lines[0])["budget"] == "$2.5/h"
    with pytest.raises(InvalidValue, match="budget"):
        tokens.create(store, ["plain"], budget=Budget(1, "d"), now=START)  # not an LLM route
    with pytest.raises(InvalidValue, match="management token takes no --budget"):
        tokens.create(store, ["llm"], ["admin"], budget=Budget(1, "d"), now=START)
    path = tmp_path / "in.jsonl"
    path.write_text(
        json.dumps({"id": "x", "routes": ["llm"], "sha256": "a" * 64, "budget": 5}) + "\n"
    )
    with pytest.raises(Exception, match="budget"):
        plan_import(store, read_import_file(str(path), START), str(path), now=START)


# --- what standard prices cannot cover --------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ({"service_tier": "priority"}, "service_tier"),
        ({"service_tier": "auto"}, "service_tier"),  # (may be the project's priority tier)
        ({"service_tier": 1}, "service_tier"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"modalities": "text"}, "modalities"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
    ],
)
def test_what_a_price_does_not_cover_is_refused_under_a_budget(
    extra: dict[str, Any], says: str
) -> None:
    body = json.dumps({"model": "gpt-4o-mini", "max_tokens": 10, **extra}).encode()
    refused = _decided(body)
    assert (refused.status, refused.reason) == (400, "invalid_request")
    assert says in refused.body
    # without a budget the same body is the model server's business
    plain = PolicySnapshot(
        1, parse_policy("version: 1\nroutes:\n  llm: {access: protected, api: openai}\n").routes
    )
    assert _decided(body, policy=plain).outcome is Outcome.ALLOW


@pytest.mark.parametrize(
    "extra",
    [{"service_tier": "default"}, {"service_tier": "flex"}, {"service_tier": None},
     {"modalities": ["text"]}, {"modalities": None}, {"audio": None}],
)  # fmt: skip
def test_standard_tiers_and_text_are_priced(extra: dict[str, Any]) -> None:
    body = json.dumps({"model": "gpt-4o-mini", "max_tokens": 10, **extra}).encode()
    assert _decided(body).outcome is Outcome.ALLOW


def _responses(tools: Any, policy: PolicySnapshot = POLICY, **kw: Any) -> Decision:
    body = json.dumps(
        {"model": "gpt-4o-mini", "input": "hi", "max_output_tokens": 16, "tools": tools}
    )
    record = TokenRecord("t1", frozenset({"*"}), frozenset(), **kw)
    llm = read_model_request(body.encode(), "POST", "/v1/responses")
    facts = RequestFacts("llm", authorization=f"Bearer {SECRET}", llm=llm)
    return decide(facts, policy, lambda d: record if d == token_hash(SECRET) else None, START)


@pytest.mark.parametrize(
    "tools",
    [[{"type": "web_search_preview"}], [{"type": "function", "name": "f"}, {"type": "mcp"}],
     [{"type": "file_search"}], [{"type": "code_interpreter"}], [{"name": "no type"}],
     [{"type": ["function"]}], ["function"], {"type": "function"}, "tools"],
)  # fmt: skip
def test_hosted_tools_are_refused_under_a_budget_or_token_limit(tools: Any) -> None:
    refused = _responses(tools)
    assert (refused.status, refused.reason) == (400, "invalid_request"), refused.body
    limited = parse_policy(
        "version: 1\nroutes:\n  llm: {access: protected, api: openai, token_limit: 100000/d}\n"
    )
    assert _responses(tools, PolicySnapshot(1, limited.routes)).status == 400
    free = parse_policy("version: 1\nroutes:\n  llm: {access: protected, api: openai}\n")
    assert _responses(tools, PolicySnapshot(1, free.routes)).outcome is Outcome.ALLOW


def test_function_and_custom_tools_are_counted_as_any_request() -> None:
    tools = [{"type": "function", "name": "f", "parameters": {}}, {"type": "custom", "name": "c"}]
    assert _responses(tools).outcome is Outcome.ALLOW
    assert _responses(None).outcome is Outcome.ALLOW
    assert _responses([]).outcome is Outcome.ALLOW


def test_a_tool_naming_its_type_twice_is_refused_under_a_limit() -> None:
    body = (
        b'{"model": "gpt-4o-mini", "input": "hi", "max_output_tokens": 16, '
        b'"tools": [{"type": "function", "type": "web_search_preview"}]}'
    )
    record = TokenRecord("t1", frozenset({"*"}), frozenset())
    llm = read_model_request(body, "POST", "/v1/responses")
    facts = RequestFacts("llm", authorization=f"Bearer {SECRET}", llm=llm)
    answer = decide(facts, POLICY, lambda d: record if d == token_hash(SECRET) else None, START)
    assert (answer.status, answer.reason) == (400, "invalid_request")
