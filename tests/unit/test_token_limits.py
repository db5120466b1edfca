"""LLM token limits (docs/llm.md#token-limits-and-budgets): the notation and its windows, the
bound a request's body sets, the counters a decision is admitted against, and the leased
budgets shared by several processes through one Redis (fakeredis here; real Redis and Envoy in
tests/integration/test_token_limits_e2e.py)."""

from __future__ import annotations

import json
import random
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import fakeredis
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from extauthz.admin import tokens
from extauthz.admin.token_files import export_lines, plan_import, read_import_file
from extauthz.core.credentials import token_hash
from extauthz.core.decision import Decision, Outcome, RequestFacts, decide
from extauthz.core.limits import TOKENS, Limited
from extauthz.core.llm import DEFAULT_MAX_TOKENS, INVALID, apply_splices, read_model_request
from extauthz.core.llm_usage import Usage
from extauthz.core.policy import PolicySnapshot, parse_policy
from extauthz.core.rate_limit import ZeroLimit
from extauthz.core.token_limit import TokenLimit
from extauthz.core.token_record import TokenRecord
from extauthz.errors import (
    BadImportLine,
    InvalidValue,
    MalformedRecord,
    PolicyError,
    StoreUnavailable,
)
from extauthz.runtime.limiter import (
    LIMIT_HEADER,
    METADATA_KEY,
    REMAINING_HEADER,
    Limiter,
)
from extauthz.storage.client import DECODING
from extauthz.storage.store import Store
from extauthz.storage.token_index import TokenIndex
from tests.support.policies import publish_routes

START = 1_800_000_000.0  # an aligned minute (and hour)
CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
JSON = "application/json"
RESPONSES, EMBEDDINGS = "/v1/responses", "/v1/embeddings"


@pytest.mark.parametrize(
    ("text", "count", "unit"),
    [("50/m", 50, "m"), ("2000/h", 2000, "h"), ("100000/d", 100000, "d"), ("9/mo", 9, "mo")],
)
def test_notation(text: str, count: int, unit: str) -> None:
    limit = TokenLimit.parse(text)
    assert (limit.count, limit.unit, str(limit)) == (count, unit, text)


@pytest.mark.parametrize(
    "text",
    ["", "50", "-1/m", "+5/d", "50/s", "50/w", "50/month", "1.5/m", "1e3/d", "50 / m", "٣/m",
     "١٠/d", "5/M", "9" * 16 + "/d", "9" * 5000 + "/d", "50/mo/m", "50/m\x00", "1_000/d"],
)  # fmt: skip
def test_notation_refused(text: str) -> None:
    with pytest.raises(ValueError, match="N/UNIT") as info:
        TokenLimit.parse(text)
    assert "from 1 to 999999999999999 (digits 0-9)" in str(info.value)


@pytest.mark.parametrize("text", ["0/d", "000/mo"])
def test_zero_is_refused_saying_what_it_would_mean(text: str) -> None:
    with pytest.raises(ZeroLimit, match="0 would refuse every LLM request"):
        TokenLimit.parse(text)
    with pytest.raises(InvalidValue) as info:  # the CLI and the API: what to do instead
        tokens.parse_token_limit(text)
    assert info.value.field == "token-limit"
    assert info.value.rule == (
        "0 would refuse every LLM request (it does not mean no limit): give none (or nothing) "
        "for no token limit of its own, or revoke the token to stop it"
    )
    with pytest.raises(InvalidValue, match=r"0 would refuse every request .* give none"):
        tokens.parse_rate_limit(text.replace("mo", "m"))


def test_whitespace_around_and_leading_zeros_are_read_as_written() -> None:
    assert TokenLimit.parse(" 0100000/d\t") == TokenLimit(100000, "d")
    assert TokenLimit.parse("999999999999999/mo") == TokenLimit(999999999999999, "mo")


def test_windows_fixed_units_align_to_the_epoch_and_months_to_the_calendar() -> None:
    minute = TokenLimit(10, "m")
    assert minute.window(START + 59.9)[0] == minute.window(START)[0] != minute.window(START + 60)[0]
    assert minute.window(START + 12.5)[1:] == (START, START + 60)

    month = TokenLimit(10, "mo")

    def at(y: int, m: int, d: int = 1, h: int = 0) -> float:
        return datetime(y, m, d, h, tzinfo=UTC).timestamp()

    index, starts, ends = month.window(at(2026, 12, 31, 23))
    assert (starts, ends) == (at(2026, 12), at(2027, 1))  # December into January
    assert month.window(at(2027, 1))[0] == index + 1
    assert month.window(at(2028, 2, 29))[1:] == (at(2028, 2), at(2028, 3))  # leap February


def test_records_carry_a_token_limit_and_a_bad_one_is_malformed() -> None:
    record = TokenRecord.from_fields({"id": "t", "routes": "llm", "token_limit": "50/m"})
    assert record.token_limit == TokenLimit(50, "m")
    assert TokenRecord.from_fields(record.to_fields()) == record
    assert record.to_json()["token_limit"] == "50/m"
    for bad in ("lots", "50/s", "0/m", "50/m,60/m", "\udcff"):
        with pytest.raises(MalformedRecord, match="token_limit"):
            TokenRecord.from_fields({"id": "t", "routes": "llm", "token_limit": bad})


@pytest.mark.parametrize(
    ("path", "extra", "cap"),
    [
        (CHAT, {}, None),
        (CHAT, {"max_tokens": 100}, 100),
        (CHAT, {"max_completion_tokens": 70}, 70),
        (RESPONSES, {"max_output_tokens": 9}, 9),
        (CHAT, {"max_tokens": 10, "max_completion_tokens": 30}, 30),  # both: the larger bounds
        (CHAT, {"max_tokens": 10, "n": 4}, 40),
        (COMPLETIONS, {"max_tokens": 10, "best_of": 5, "n": 2}, 50),
        (COMPLETIONS, {"max_tokens": 10, "prompt": ["a", "b", "c"]}, 30),  # prompts multiply
        (COMPLETIONS, {"max_tokens": 10, "prompt": [[1, 2], [3]], "n": 2}, 40),
        (COMPLETIONS, {"max_tokens": 10, "prompt": [1, 2, 3]}, 10),  # one prompt, as token ids
        (CHAT, {"n": 3}, None),  # choices without a cap: no bound of its own
        (CHAT, {"max_tokens": None}, None),  # null is absent
        (CHAT, {"n": None, "max_tokens": 7}, 7),
        (CHAT, {"messages": [{"max_tokens": 5}]}, None),  # nested: not the request's
        (EMBEDDINGS, {"input": ["a", "b"]}, 0),  # (no output: the body bounds it)
    ],
)
@pytest.mark.parametrize("pad", [0, 20_000], ids=["parsed", "scanned"])
def test_the_bound_is_the_body_plus_the_output_cap_times_the_outputs(
    path: str, extra: dict[str, Any], cap: int | None, pad: int
) -> None:
    raw = json.dumps({"model": "m", "user": "p" * pad, **extra}).encode()
    found = read_model_request(raw, "POST", path)
    assert (found.model, found.error) == ("m", None)
    assert found.bound(None) == (None if cap is None else len(raw) + cap)
    if cap is None:  # every request a limit covers gets a cap: a finite bound
        choices = max(extra.get("n") or 1, 1)
        assert found.bound(100) == len(raw) + 100 * choices
        assert dict(found.cap_edits(100)) == {"max_tokens": 100}


@pytest.mark.parametrize(
    ("path", "extra", "field"),
    [
        (CHAT, {"max_tokens": 0}, "max_tokens"),  # (a server may take 0 for "no cap")
        (CHAT, {"max_tokens": -1}, "max_tokens"),
        (CHAT, {"max_tokens": 10.0}, "max_tokens"),  # (servers coerce it: we do not)
        (CHAT, {"max_tokens": 1e3}, "max_tokens"),
        (CHAT, {"max_tokens": "100"}, "max_tokens"),
        (CHAT, {"max_tokens": True}, "max_tokens"),
        (CHAT, {"max_tokens": [100]}, "max_tokens"),
        (CHAT, {"max_tokens": 10**10}, "max_tokens"),
        (CHAT, {"max_tokens": 10, "n": -2}, "n"),
        (CHAT, {"max_tokens": 10, "n": 2.5}, "n"),
        (CHAT, {"n": 1.0}, "n"),
        (CHAT, {"n": 0}, "n"),
        (CHAT, {"stream": "true"}, "stream"),
        (CHAT, {"stream": 1}, "stream"),
        (CHAT, {"max_output_tokens": 5}, "max_output_tokens"),  # another endpoint's cap
        (CHAT, {"n_predict": 5}, "n_predict"),  # llama.cpp's
        (CHAT, {"max_new_tokens": 5}, "max_new_tokens"),  # TGI's
        (CHAT, {"best_of": 2}, "best_of"),
        (RESPONSES, {"max_tokens": 5}, "max_tokens"),
        (RESPONSES, {"n": 2}, "n"),
        (COMPLETIONS, {"prompt": []}, "prompt"),
        (COMPLETIONS, {"prompt": ["a", 1]}, "prompt"),
        (COMPLETIONS, {"prompt": [[]]}, "prompt"),
        (COMPLETIONS, {"prompt": [{"a": 1}]}, "prompt"),
        (COMPLETIONS, {"prompt": [[1, True]]}, "prompt"),
        (COMPLETIONS, {"prompt": 5}, "prompt"),
        (CHAT, {"Max_Tokens": 5}, "max_tokens"),  # Go servers match keys without case
        (CHAT, {"STREAM": True}, "stream"),
        (CHAT, {"\u017ftream": True}, "stream"),  # long s: case-folds to s (so does Go)
    ],
)
@pytest.mark.parametrize("pad", [0, 20_000], ids=["parsed", "scanned"])
def test_values_a_server_could_read_otherwise_are_refused(
    path: str, extra: dict[str, Any], field: str, pad: int
) -> None:
    raw = json.dumps({"model": "m", "user": "p" * pad, **extra}).encode()
    found = read_model_request(raw, "POST", path)
    assert (found.model, found.error) == (None, INVALID)
    assert field in found.message


def test_a_repeated_key_is_refused_whichever_parser() -> None:
    for pad in (b"", b'"p": "' + b"x" * 20_000 + b'", '):
        for pair in (b'"max_tokens": 5, "max_tokens": 900', b'"stream": true, "stream": false'):
            raw = b"{" + pad + b'"model": "m", ' + pair + b"}"
            assert read_model_request(raw).error == INVALID
        raw = b"{" + pad + b'"model": "m", "MODEL": "other"}'
        assert read_model_request(raw).error == INVALID


_value = st.one_of(
    st.integers(-5, 2 * 10**9), st.floats(allow_nan=False), st.booleans(), st.none(),
    st.text(max_size=3),
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["max_tokens", "max_completion_tokens", "n", "best_of",
                                        "max_output_tokens", "x", "stream", "N"]), _value,
                       max_size=4))  # fmt: skip
def test_the_scanner_and_the_parser_agree_on_the_bound(caps: dict[str, object]) -> None:
    small = json.dumps({"model": "m", **caps}).encode()
    large = json.dumps({"model": "m", "user": "x" * 20_000, **caps}).encode()
    a, b = read_model_request(small), read_model_request(large)
    keys = tuple(key for key, _, _ in a.nulls)
    assert a._replace(size=0, nulls=()) == b._replace(size=0, nulls=())
    assert keys == tuple(key for key, _, _ in b.nulls)
    if a.error is None:
        found_a, found_b = a.bound(64), b.bound(64)
        assert found_a is not None and found_b is not None
        assert found_a - len(small) == found_b - len(large)


DOCUMENT = parse_policy(
    """
version: 1
routes:
  llm:
    access: protected
    api: openai
    token_limit: 1000/m
  open-llm:
    access: public
    api: openai
    token_limit: 100/h
  plain:
    access: protected
"""
)
POLICY = PolicySnapshot(1, DOCUMENT.routes)
SECRET = "tl-secret"


def _lookup(record: TokenRecord) -> Any:
    return lambda digest: record if digest == token_hash(SECRET) else None


def test_a_decision_is_admitted_against_the_tokens_limit_and_the_routes_per_caller() -> None:
    record = TokenRecord("t1", frozenset({"*"}), frozenset(), token_limit=TokenLimit(50, "m"))
    body = b'{"model": "m", "max_tokens": 10}'
    facts = RequestFacts("llm", authorization=f"Bearer {SECRET}", llm=read_model_request(body))
    allow = decide(facts, POLICY, _lookup(record), START)
    assert allow.outcome is Outcome.ALLOW
    assert [(t.scope, str(t.limit)) for t in allow.limits if t.kind is TOKENS] == [
        ("token:t1", "50/m"),
        ("route:llm:tok:t1", "1000/m"),
    ]
    assert allow.reserve == len(body) + 10
    listing = facts._replace(
        llm=read_model_request(b"", "GET", "/v1/models")
    )  # no model: no LLM tokens
    assert decide(listing, POLICY, _lookup(record), START).limits == ()
    public = RequestFacts("open-llm", source_address="10.1.2.3", llm=read_model_request(body))
    assert [t.scope for t in decide(public, POLICY, _lookup(record), START).limits] == [
        "route:open-llm:addr:10.1.2.3"
    ]


def test_token_limit_only_on_llm_routes_with_file_and_line() -> None:
    with pytest.raises(PolicyError, match=r":5: .*token_limit.*api: openai"):
        parse_policy("version: 1\nroutes:\n  r:\n    access: protected\n    token_limit: 5/m\n")
    with pytest.raises(PolicyError, match=r":6: .*token_limit.*N/UNIT"):
        parse_policy(
            "version: 1\nroutes:\n  r:\n    access: protected\n    api: openai\n"
            "    token_limit: 5/s\n"
        )


# --- the limiter -------------------------------------------------------------------------


def _store(client: Any = None) -> Store:
    return Store(client or fakeredis.FakeRedis(**DECODING), "extauthz:")


def _allow(reserve: int, *limits: Limited) -> Decision:
    return Decision(
        Outcome.ALLOW, 200, "granted", limits=limits, reserve=reserve, model="m",
        metadata=(("subject", "t1"),),
    )  # fmt: skip


def _metadata(decision: Decision) -> str:
    return dict(decision.metadata)[METADATA_KEY]


LIMIT = Limited(TOKENS, "token:t1", TokenLimit(1000, "m"), "this token")


def test_reservations_never_pass_the_limit_and_the_429_says_when_to_retry() -> None:
    limiter = Limiter(_store())
    admitted = []
    for _ in range(20):
        answer = limiter.admit(_allow(300, LIMIT), START + 10)
        if answer.outcome is not Outcome.ALLOW:
            break
        admitted.append(answer)
    assert len(admitted) == 3  # 3 x 300 <= 1000 < 4 x 300
    assert answer.status == 429 and answer.reason == "token_limit_reached"
    assert dict(answer.headers)["retry-after"] == "50"  # to the minute's end
    assert json.loads(answer.body)["error"] == "token_limit_reached"
    headers = dict(admitted[-1].response_headers)
    assert headers[LIMIT_HEADER] == "1000" and headers[REMAINING_HEADER] == "100"
    # the responses used less: what they did not use is admitted again
    for decision in admitted:
        limiter.settle(_metadata(decision), Usage(120, 0), START + 11)
    assert limiter.admit(_allow(300, LIMIT), START + 12).outcome is Outcome.ALLOW
    # the next window starts afresh
    assert limiter.admit(_allow(900, LIMIT), START + 60).outcome is Outcome.ALLOW


def test_a_request_without_a_cap_is_admitted_until_the_count_reaches_the_limit() -> None:
    store = _store()
    limiter = Limiter(store)
    first = limiter.admit(_allow(1, LIMIT), START)
    assert first.outcome is Outcome.ALLOW
    limiter.settle(_metadata(first), Usage(1500, 0), START + 1)  # it used more than the limit
    limiter.sync(START + 1)  # the debt is paid into Redis
    assert int(store.client.get("extauthz:tl:token:t1:m30000000") or 0) >= 1000
    other = Limiter(store)  # another process learns it from Redis
    assert other.admit(_allow(1, LIMIT), START + 2).status == 429
    assert limiter.admit(_allow(1, LIMIT), START + 2).status == 429


def test_usage_beyond_a_reservation_is_owed_by_the_window_the_response_ends_in() -> None:
    store = _store()
    limiter = Limiter(store)
    first = limiter.admit(_allow(100, LIMIT), START + 58)  # a long stream at :58
    limiter.settle(_metadata(first), Usage(2500, 0), START + 61)  # ends in the next minute
    limiter.sync(START + 61)
    begun = int(store.client.get("extauthz:tl:token:t1:m30000000") or 0)
    ended = int(store.client.get("extauthz:tl:token:t1:m30000001") or 0)
    assert begun <= LIMIT.limit.count and ended == 2400  # (100 of it was reserved)
    assert limiter.admit(_allow(1, LIMIT), START + 62).status == 429


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 300), st.integers(0, 300)), max_size=30))
def test_remaining_tokens_never_exceed_the_limit(steps: list[tuple[int, int]]) -> None:
    limit = Limited(TOKENS, "token:t1", TokenLimit(200, "m"), "this token")
    limiter = Limiter(_store())
    for reserve, used in steps:
        answer = limiter.admit(_allow(reserve, limit), START + 1)
        if answer.outcome is Outcome.ALLOW:
            assert 0 <= int(dict(answer.response_headers)[REMAINING_HEADER]) <= 200
            limiter.settle(_metadata(answer), Usage(min(used, reserve), 0), START + 1)


def _decided(route: str, body: bytes, path: str = "/v1/chat/completions", **kw: Any) -> Decision:
    record = TokenRecord("t1", frozenset({"*"}), frozenset(), token_limit=kw.pop("limit", None))
    llm = read_model_request(body, "POST", path, kw.pop("content_type", "application/json"))
    facts = RequestFacts(route, authorization=f"Bearer {SECRET}", llm=llm)
    return decide(facts, POLICY, _lookup(record), START)


def test_a_request_whose_bound_alone_is_over_a_limit_is_413_without_retry_after() -> None:
    capped = b'{"model": "m", "max_tokens": 400}'
    refused = _decided("llm", capped, limit=TokenLimit(200, "m"))
    assert (refused.status, refused.reason) == (413, "request_too_large")
    assert "retry-after" not in dict(refused.headers)
    assert str(len(capped) + 400) in refused.body and "200/m" in refused.body
    # no cap named, a limit applies: 4096 is added, and bounds it (over the route's 1000/m)
    assert _decided("llm", b'{"model": "m"}').status == 413
    fits = _decided("llm", b'{"model": "m", "max_tokens": null, "n": 2}', limit=None)
    assert fits.status == 413  # (4096 x 2)
    small = parse_policy(
        "version: 1\nroutes:\n  llm: {access: protected, api: openai, token_limit: 10000/m}\n"
    )
    facts = RequestFacts(
        "llm", authorization=f"Bearer {SECRET}",
        llm=read_model_request(b'{"model": "m", "max_tokens": null}'),
    )  # fmt: skip
    record = TokenRecord("t1", frozenset({"*"}), frozenset())
    allowed = decide(facts, PolicySnapshot(1, small.routes), _lookup(record), START)
    assert allowed.outcome is Outcome.ALLOW
    edited = apply_splices(b'{"model": "m", "max_tokens": null}', dict(allowed.metadata)["edit"])
    assert json.loads(edited or b"") == {"model": "m", "max_tokens": DEFAULT_MAX_TOKENS}
    assert allowed.reserve == len(b'{"model": "m", "max_tokens": null}') + DEFAULT_MAX_TOKENS


@pytest.mark.parametrize(
    ("path", "content_type", "status", "reason"),
    [
        ("/v1/chat/completions?model=big", JSON, 400, "invalid_request"),
        ("/v1/chat/completions?x=1&MODEL=big", JSON, 400, "invalid_request"),
        ("/v1/chat/completions?%6Dodel=big", JSON, 400, "invalid_request"),
        ("/v1/chat/completions?model[]=big", JSON, 400, "invalid_request"),
        ("/v1/chat/completions;model=big", JSON, 404, "unknown_endpoint"),
        ("/v1/chat/completions?api-version=1", "application/json; charset=utf-8", 200, "granted"),
        ("/v1/chat/completions", "APPLICATION/JSON", 200, "granted"),
        (
            "/v1/chat/completions",
            "application/x-www-form-urlencoded",
            415,
            "unsupported_media_type",
        ),
        ("/v1/chat/completions", "multipart/form-data; boundary=x", 415, "unsupported_media_type"),
        ("/v1/chat/completions", "application/json,text/plain", 415, "unsupported_media_type"),
        ("/v1/chat/completions", "", 415, "unsupported_media_type"),
        ("/v1/chat/completions", None, 415, "unsupported_media_type"),  # (or not forwarded)
        ("/openai/deployments/big/chat/completions", JSON, 404, "unknown_endpoint"),
        ("/v1/engines/big/chat/completions", JSON, 404, "unknown_endpoint"),
        ("/v1//chat/completions", JSON, 404, "unknown_endpoint"),
        ("/v1/chat%2Fcompletions", JSON, 404, "unknown_endpoint"),
    ],
)
def test_one_place_names_the_model(
    path: str, content_type: str | None, status: int, reason: str
) -> None:
    body = b'{"model": "m", "max_tokens": 10}'
    decided = _decided("llm", body, path, content_type=content_type)
    assert (decided.status, decided.reason) == (status, reason)
    if status != 200:
        assert json.loads(decided.body)["error"] == reason


def test_settled_by_another_process_and_given_back_when_the_window_is_full() -> None:
    store = _store()
    a, b = Limiter(store), Limiter(store)
    held = a.admit(_allow(600, LIMIT), START)
    assert held.outcome is Outcome.ALLOW
    assert b.admit(_allow(600, LIMIT), START).status == 429  # only ~400 left in Redis
    b.settle(_metadata(held), Usage(100, 0), START + 1)  # the response passed b: b holds 500
    assert a.admit(_allow(600, LIMIT), START + 1.5).status == 429  # Redis has 400 left
    b.sync(START + 1.5)  # the window is full: b gives its 500 back
    assert a.admit(_allow(600, LIMIT), START + 1.6).status == 429  # (a asks again later)
    assert a.admit(_allow(600, LIMIT), START + 2).outcome is Outcome.ALLOW


def test_every_limit_must_have_room_and_a_refusal_returns_the_others() -> None:
    small = Limited(TOKENS, "route:llm:tok:t1", TokenLimit(100, "m"), "route llm")
    limiter = Limiter(_store())
    assert limiter.admit(_allow(150, LIMIT, small), START).status == 429
    for _ in range(6):  # the big limit got its 150 back each time
        assert limiter.admit(_allow(150, LIMIT), START).outcome is Outcome.ALLOW


class _Down:
    def pipeline(self, **_: Any) -> Any:
        raise redis.ConnectionError("down")

    def incrby(self, *_: Any) -> Any:
        raise redis.ConnectionError("down")


def test_redis_down_fails_closed_unless_told_to_allow() -> None:
    closed = Limiter(_store(_Down()))
    assert closed.admit(_allow(5, LIMIT), START).status == 503
    opened = Limiter(_store(_Down()), on_error="allow")
    answer = opened.admit(_allow(5, LIMIT), START)
    assert answer.outcome is Outcome.ALLOW and METADATA_KEY not in dict(answer.metadata)


@pytest.mark.parametrize(
    "metadata",
    ["", "x", "[]", "{}", "[1]", '[1, "x"]', '["a", []]', '[1, [["c", "5/s", 0]]]',
     '[1, [["c", "5/m"]]]', "[1e400, []]", '[1, [["c", "5/m", "x"]]]', "[" * 100_000],
)  # fmt: skip
def test_unreadable_metadata_is_not_settled_and_breaks_nothing(metadata: str) -> None:
    limiter = Limiter(_store())
    limiter.settle(metadata, Usage(10, 0), START)
    limiter.sync(START)
    assert limiter.admit(_allow(5, LIMIT), START).outcome is Outcome.ALLOW


def test_a_warm_budget_makes_few_redis_calls() -> None:
    calls = []
    store = _store()
    store.observe = lambda command, seconds: calls.append(command)
    limiter = Limiter(store)
    big = Limited(TOKENS, "token:t1", TokenLimit(10_000_000, "d"), "this token")
    now = START
    for _ in range(2000):  # 100 requests a second of ~150 tokens
        now += 0.01
        answer = limiter.admit(_allow(200, big), now)
        limiter.settle(_metadata(answer), Usage(150, 0), now)
    assert len(calls) / 2000 <= 0.1, len(calls)


@pytest.mark.parametrize("seed", range(8))
def test_three_processes_never_pass_the_limit_and_use_most_of_it(seed: int) -> None:
    """Bounded requests from three limiters on one Redis, interleaved at random, twice the
    load the limit allows: the tokens used in the window never exceed N, and most of N is
    used."""
    rng = random.Random(seed)  # noqa: S311 (a simulation)
    store = _store()
    procs = [Limiter(store) for _ in range(3)]
    limit = Limited(TOKENS, "token:t1", TokenLimit(2000, "m"), "this token")
    in_flight: list[tuple[str, int]] = []
    used = 0
    now = START
    offered = 0
    while offered < 4000:
        now += 0.05
        proc = rng.choice(procs)
        if in_flight and rng.random() < 0.5:
            metadata, spent = in_flight.pop(rng.randrange(len(in_flight)))
            rng.choice(procs).settle(metadata, Usage(spent, 0), now)  # any process may settle
            continue
        bound = rng.randint(40, 160)
        offered += bound
        answer = proc.admit(_allow(bound, limit), now)
        if answer.outcome is Outcome.ALLOW:
            spent = rng.randint(bound // 2, bound)
            used += spent
            in_flight.append((_metadata(answer), spent))
        if rng.random() < 0.05:
            rng.choice(procs).sync(now)
    assert now < START + 60
    assert used <= 2000
    assert used >= 0.8 * 2000, used


# --- where a token's limit is set ----------------------------------------------------------


def test_token_limit_through_create_update_export_import(store: Store, tmp_path: Path) -> None:
    publish_routes(store, llm=["llm"])
    now = START
    made = tokens.create(store, ["llm"], token_id="l1", now=now, token_limit=TokenLimit(50, "m"))
    assert store.token_record(token_hash(made.token)).token_limit == TokenLimit(50, "m")  # type: ignore[union-attr]
    assert tokens.update(store, "l1", name="n", now=now).record.token_limit == TokenLimit(50, "m")
    changed = tokens.update(store, "l1", token_limit=TokenLimit(9, "mo"), now=now)
    assert changed.record.token_limit == TokenLimit(9, "mo")
    assert tokens.update(store, "l1", token_limit=None, now=now).record.token_limit is None
    tokens.update(store, "l1", token_limit=tokens.parse_token_limit("100000/d"), now=now)
    (line,) = export_lines(store)
    assert json.loads(line)["token_limit"] == "100000/d"
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({**json.loads(line), "token_limit": "7/h"}) + "\n")
    plan = plan_import(store, read_import_file(str(path), now), str(path), now)
    TokenIndex(store).write_many(plan.items)
    assert tokens.show(store, "l1").token_limit == TokenLimit(7, "h")
    for bad in ("7/s", 7, ["7/h"], "", "7/hour"):
        path.write_text(json.dumps({**json.loads(line), "token_limit": bad}) + "\n")
        with pytest.raises(BadImportLine, match="token_limit"):
            read_import_file(str(path), now)


@pytest.mark.parametrize("text", ["50/s", "lots", "", "-5/m", "50/m/m", "1e3/m", "\x1b[2J"])
def test_a_bad_token_limit_names_the_flag_and_the_rule(text: str) -> None:
    with pytest.raises(InvalidValue, match="token-limit") as e:
        tokens.parse_token_limit(text)
    assert "100000/d" in e.value.rule
    assert tokens.parse_token_limit("none") is None


def test_a_debt_redis_did_not_take_is_paid_at_the_next_sync(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = _store()
    limiter = Limiter(store)
    first = limiter.admit(_allow(1, LIMIT), START)
    limiter.settle(_metadata(first), Usage(400, 0), START + 1)
    real = store.add_units

    def down(*_: Any) -> None:
        raise StoreUnavailable("down")

    monkeypatch.setattr(store, "add_units", down)
    limiter.sync(START + 1)
    limiter.sync(START + 2)
    assert caplog.text.count("kept for the next sync") == 1  # once a minute at most
    monkeypatch.setattr(store, "add_units", real)
    limiter.sync(START + 3)
    assert int(store.client.get("extauthz:tl:token:t1:m30000000") or 0) == 400


def test_a_route_default_cap_bounds_requests_that_name_none() -> None:
    plain = b'{"model": "m", "messages": []}'
    found = read_model_request(plain)
    assert found.bound(256) == len(plain) + 256
    assert found.cap_edits(256) == (("max_tokens", 256),)
    own = b'{"model": "m", "max_tokens": 9}'
    assert read_model_request(own).bound(256) == len(own) + 9
    assert read_model_request(own).cap_edits(256) == ()
    nulls = b'{"model": "m", "max_tokens": 9, "max_completion_tokens": null}'
    assert read_model_request(nulls).cap_edits(256) == (("max_completion_tokens", 9),)
    assert read_model_request(b"", "GET", "/v1/models").bound(256) == 0
    document = parse_policy(
        "version: 1\nroutes:\n  llm: {access: public, api: openai, default_max_tokens: 256}\n"
    )
    snapshot = PolicySnapshot(1, document.routes)
    facts = RequestFacts("llm", llm=found)
    edit = dict(decide(facts, snapshot, lambda _: None, START).metadata)["edit"]
    assert json.loads(apply_splices(plain, edit) or b"") == {"max_tokens": 256, **json.loads(plain)}
    for bad in ("0", "1000000001", "lots", "[1]"):
        with pytest.raises(PolicyError, match="default_max_tokens"):
            parse_policy(
                f"version: 1\nroutes:\n  llm: {{access: public, api: openai, default_max_tokens: {bad}}}\n"
            )
    with pytest.raises(PolicyError, match=r"default_max_tokens.*api: openai"):
        parse_policy("version: 1\nroutes:\n  r: {access: public, default_max_tokens: 5}\n")


def test_a_default_cap_counts_every_choice_asked_for() -> None:
    body = b'{"model": "m", "n": 3}'
    assert read_model_request(body).bound(100) == len(body) + 300


def test_what_responses_settle_in_another_process_goes_back_for_every_process() -> None:
    """Allows made in A, their responses settled in B (the access log's one stream): B gives
    what they did not use back to Redis at its next sync, so the limit stays usable."""
    store = _store()
    a, b = Limiter(store), Limiter(store)
    limit = Limited(TOKENS, "token:t1", TokenLimit(10_000, "m"), "this token")
    admitted = 0
    for i in range(200):
        now = START + i * 0.25
        answer = a.admit(_allow(900, limit), now)
        if answer.outcome is Outcome.ALLOW:
            admitted += 1
            b.settle(_metadata(answer), Usage(100, 0), now)
        a.sync(now)
        b.sync(now)
    assert admitted >= 90  # 100 tokens each of 10 000: most of the window's requests
    assert admitted * 100 <= 10_000


@pytest.mark.parametrize(
    "counters",
    [
        '[["tl:token:t1:m30000000", "1000/m", 1800000061]]',  # not the window's end
        '[["tl:token:t1:m29999999", "1000/m", 1800000060]]',  # another window's counter
        '[["tl:token:t1:h30000000", "1000/m", 1800000060]]',  # another unit's
        '[["tl:token:t1:mo1", "1000/mo", 1000000000000000]]',  # after the year 9999
        '[["tl:token:t1:m30000000", "1000/m", -60]]',
    ],
)
def test_settle_refuses_counters_that_do_not_name_their_window(counters: str) -> None:
    store = _store()
    limiter = Limiter(store)
    limiter.settle(f"[600, {counters}]", Usage(0, 0), START)
    limiter.sync(START, final=True)
    assert [k for k in store.client.scan_iter("extauthz:tl:*")] == []


@pytest.mark.parametrize("need", [-600, 1001, 10**18])
def test_settle_refuses_a_reservation_no_limit_could_have_made(need: int) -> None:
    store = _store()
    limiter = Limiter(store)
    limiter.settle(
        f'[{need}, [["tl:token:t1:m30000000", "1000/m", 1800000060]]]', Usage(0, 0), START
    )
    limiter.sync(START, final=True)
    assert [k for k in store.client.scan_iter("extauthz:tl:*")] == []


def test_a_lease_sets_its_counters_expiry_until_one_did_then_is_one_command() -> None:
    client = fakeredis.FakeRedis(**DECODING)
    store = _store(client)
    limiter = Limiter(store)
    limit = Limited(TOKENS, "token:t1", TokenLimit(10**9, "d"), "this token")
    key = f"extauthz:tl:token:t1:d{int(START // 86400)}"
    client.set(key, "5")  # (made without an expiry: a lease that failed half way)
    assert limiter.admit(_allow(100, limit), START).outcome is Outcome.ALLOW
    assert client.ttl(key) > 0  # (the first lease of this process set it)
    commands: list[str] = []
    real = client.incrby

    def counted(*args: Any, **kw: Any) -> Any:
        commands.append("incrby")
        return real(*args, **kw)

    real_pipeline = client.pipeline

    def pipelined(*args: Any, **kw: Any) -> Any:
        commands.append("incrby+expireat")
        return real_pipeline(*args, **kw)

    client.incrby = counted  # type: ignore[method-assign]
    client.pipeline = pipelined  # type: ignore[method-assign]
    for i in range(1, 2000):
        limiter.admit(_allow(1000, limit), START + i)  # (never full: nothing given back)
    assert commands and set(commands) == {"incrby"}  # (later leases: INCRBY alone)


class _SlowGiveBack(Store):
    """A store whose first budget given back (a negative add_units) is in flight until
    `landed` is set."""

    def __init__(self) -> None:
        super().__init__(fakeredis.FakeRedis(**DECODING), "extauthz:")
        self.in_flight = threading.Event()
        self.landed = threading.Event()

    def add_units(self, counter: str, units: int, ends: float) -> None:
        if units < 0 and not self.in_flight.is_set():
            self.in_flight.set()
            assert self.landed.wait(5)
        super().add_units(counter, units, ends)


def test_a_lease_never_races_a_budget_given_back() -> None:
    """A budget on its way back to Redis (an idle one, at a sync) is not counted twice
    against a lease asked meanwhile: the lease waits for it to land, and the request it was
    for is admitted (it was refused, with room left)."""
    store = _SlowGiveBack()
    limiter = Limiter(store)
    first = limiter.admit(_allow(600, LIMIT), START + 1)
    assert first.outcome is Outcome.ALLOW
    limiter.settle(_metadata(first), Usage(50, 0), START + 1.5)  # 550 back: held here
    giving = threading.Thread(target=limiter.sync, args=(START + 4,))  # idle: given back
    giving.start()
    assert store.in_flight.wait(5)
    answers: list[Decision] = []
    asking = threading.Thread(
        target=lambda: answers.append(limiter.admit(_allow(600, LIMIT), START + 4))
    )
    asking.start()
    asking.join(0.2)
    store.landed.set()
    giving.join(5)
    asking.join(5)
    assert [a.outcome for a in answers] == [Outcome.ALLOW]  # 50 used + 600 <= 1000
    assert int(store.client.get("extauthz:tl:token:t1:m30000000") or 0) == 650


def test_a_lease_eaten_by_a_debt_settled_meanwhile_is_asked_again() -> None:
    """A response that used more than its reservation settles while a lease is asked (its
    debt takes the units leased): the request is leased for again, not refused."""
    limiter: Limiter

    class Meanwhile(Store):
        debt: ClassVar[list[str]] = []

        def take_units(self, *args: Any, **kwargs: Any) -> tuple[int, int]:
            answer = super().take_units(*args, **kwargs)
            if self.debt:  # (a response 200 over its reservation ends during this lease)
                limiter.settle(self.debt.pop(), Usage(300, 0), START + 2)
            return answer

    store = Meanwhile(fakeredis.FakeRedis(**DECODING), "extauthz:")
    limiter = Limiter(store)
    first = limiter.admit(_allow(100, LIMIT), START + 1)
    store.debt.append(_metadata(first))
    assert limiter.admit(_allow(100, LIMIT), START + 2).outcome is Outcome.ALLOW
    assert not store.debt
