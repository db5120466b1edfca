"""LLM endpoints (docs/llm.md): the model from the request body, the route's
models, a credential's models, and the decisions they make."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extauthz.admin import tokens
from extauthz.admin.token_files import export_lines, plan_import, read_import_file
from extauthz.core.credentials import token_hash
from extauthz.core.decision import Decision, RequestFacts, decide
from extauthz.core.llm import (
    BAD_MODEL,
    DUPLICATE_MODEL,
    INVALID,
    MODEL_NAME,
    NO_BODY,
    NO_MODEL,
    NOT_JSON,
    SMALL_BODY,
    UNKNOWN_ENDPOINT,
    LlmRequest,
    apply_splices,
    check_model_patterns,
    model_allowed,
    read_model_request,
)
from extauthz.core.policy import PolicySnapshot, parse_policy
from extauthz.core.token_record import TokenRecord
from extauthz.errors import BadImportLine, InvalidValue, MalformedRecord, PolicyError
from extauthz.storage.store import Store
from extauthz.storage.token_index import TokenIndex
from tests.support.policies import publish_routes

NOW = 1_800_000_000.0
BIG = "x" * (SMALL_BODY + 10)  # makes a body take the scanner's way, not the full parse


def seen(found: LlmRequest) -> tuple[str | None, bool, str | None]:
    """What a reading found that does not depend on the body's size."""
    return found.model, found.stream, found.error


def body(obj: object, pad: bool = False) -> bytes:
    if pad and isinstance(obj, dict):
        obj = {"user": BIG, **obj}
    return json.dumps(obj).encode()


@pytest.mark.parametrize("pad", [False, True], ids=["parsed", "scanned"])
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"model": "llama-3-8b", "messages": []}, LlmRequest("llama-3-8b")),
        ({"model": "m", "stream": True}, LlmRequest("m", True)),
        ({"stream": True, "model": "m"}, LlmRequest("m", True)),
        ({"model": "m", "stream": "yes"}, LlmRequest(None, error=INVALID)),
        ({"model": "m", "stream": None}, LlmRequest("m")),
        ({"messages": [{"model": "nested"}], "model": "top"}, LlmRequest("top")),
        ({"messages": [{"model": "nested"}]}, LlmRequest(None, error=NO_MODEL)),
        ({"model": None}, LlmRequest(None, error=BAD_MODEL)),
        ({"model": 5}, LlmRequest(None, error=BAD_MODEL)),
        ({"model": []}, LlmRequest(None, error=BAD_MODEL)),
        ({"model": {"name": "m"}}, LlmRequest(None, error=BAD_MODEL)),
        ({"model": ""}, LlmRequest(None, error=BAD_MODEL)),
        ({"model": "a\nb"}, LlmRequest(None, error=BAD_MODEL)),
        ({"model": "a\u0000"}, LlmRequest(None, error=BAD_MODEL)),
        ({"model": "with space"}, LlmRequest(None, error=BAD_MODEL)),
        ({"model": "é"}, LlmRequest(None, error=BAD_MODEL)),
        ({"model": "x" * 10_000}, LlmRequest(None, error=BAD_MODEL)),
        ({"model": "x" * 256}, LlmRequest("x" * 256)),
        ({"model": 'quo"te\\'}, LlmRequest('quo"te\\')),
        ({"mod\u0065l": "escaped-key"}, LlmRequest("escaped-key")),
        ({}, LlmRequest(None, error=NO_MODEL)),
    ],
)
def test_the_top_level_model_whatever_the_size(
    raw: dict[str, object], expected: LlmRequest, pad: bool
) -> None:
    assert seen(read_model_request(body(raw, pad))) == seen(expected)


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"", NO_BODY),
        (b"  \n", NO_BODY),
        (b'{"model": "a", "model": "b"}', DUPLICATE_MODEL),
        (b'{"model": "a", "messages": {"model": "b"}, "model": "a"}', DUPLICATE_MODEL),
        (b'\xef\xbb\xbf{"model": "a"}', NOT_JSON),  # a byte order mark
        (b'{"model": "\xff"}', NOT_JSON),  # not UTF-8
        (b'{"model": "a", "x": "\xc3"}', NOT_JSON),
        (b'{"model": "a"', NOT_JSON),
        (b'{"model": "a"} trailing', NOT_JSON),
        (b'{"model": "a",}', NOT_JSON),
        (b"{'model': 'a'}", NOT_JSON),
        (b'{"model": "a", "x": NaN}', NOT_JSON),
        (b'{"model": "a", "x": [1, 2}', NOT_JSON),
        (b'{"model": "a" "x": 1}', NOT_JSON),
        (b'["model", "a"]', NOT_JSON),
        (b'"model"', NOT_JSON),
        (b"model=a", NOT_JSON),
        (b'{"x": "' + b"\\" * 3 + b'", "model": "a"}', NOT_JSON),  # an unclosed string
        (b'{"x": ' + b"[" * 5_000 + b"]" * 5_000 + b', "model": "a"}', NOT_JSON),  # deep
        (b'{"x": ' + b"{" * 50_000 + b', "model": "a"}', NOT_JSON),
    ],
)
def test_bodies_that_name_no_model(raw: bytes, error: str) -> None:
    assert read_model_request(raw) == LlmRequest(None, error=error)
    padded = raw.replace(b"{", b'{"user": "' + BIG.encode() + b'", ', 1)
    if padded != raw and error not in (NO_BODY,):
        assert read_model_request(padded).error == error, "the scanner disagrees"


def test_model_after_a_900kb_string_and_a_10mb_prompt() -> None:
    late = b'{"user": "' + b"y" * 900_000 + b'", "model": "late"}'
    assert read_model_request(late).model == "late"
    huge = body({"model": "m", "messages": [{"role": "user", "content": "z" * 10_000_000}]})
    assert read_model_request(huge).model == "m"


def test_get_needs_no_model() -> None:
    assert read_model_request(b"", "GET", "/v1/models") == LlmRequest(None)
    assert read_model_request(b"", "HEAD", "/v1/models/org/name") == LlmRequest(None)
    assert read_model_request(b"", "POST").error == NO_BODY
    assert read_model_request(b"", "GET").error == UNKNOWN_ENDPOINT  # (chat is POST only)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=8), _json, max_size=6), st.booleans())
def test_the_scanner_agrees_with_a_full_parse(obj: dict[str, object], pad: bool) -> None:
    """Whatever the JSON object, the scanner (large bodies) and the parser (small ones) find
    the same top-level model."""
    full = read_model_request(body(obj))
    scanned = read_model_request(body(obj, pad=True))
    expected_model = obj.get("model") if "model" in obj else None
    assert full._replace(size=0) == scanned._replace(size=0)
    visible = isinstance(expected_model, str) and MODEL_NAME.fullmatch(expected_model)
    if visible:
        assert full.model == expected_model


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_give_a_model_or_a_reason(raw: bytes) -> None:
    found = read_model_request(raw)
    assert (found.model is None) != (found.error is None) or found == LlmRequest(None)


def test_model_patterns() -> None:
    assert check_model_patterns(["llama-3-8b", "qwen2-*", "llama-3-8b"]) == (
        "llama-3-8b",
        "qwen2-*",
    )
    for bad in ("*", "a*b", "with space", "", "é", "x" * 300, "a\n"):
        with pytest.raises(ValueError):
            check_model_patterns([bad])
    assert model_allowed(["qwen2-*"], "qwen2-7b") and not model_allowed(["qwen2-*"], "qwen3")
    assert not model_allowed(["Llama"], "llama")  # exact and case-sensitive
    assert not model_allowed([], "anything")


POLICY = """
version: 1
routes:
  llm:
    access: protected
    api: openai
    models: [small, "big-*"]
  llm-any:
    access: protected
    api: openai
  llm-open:
    access: public
    api: openai
    models: [small]
  plain:
    access: protected
"""
SNAPSHOT = PolicySnapshot(1, parse_policy(POLICY).routes)
SMALL_ONLY = "eat_small-only-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
ANY_MODEL = "eat_any-model-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
TOKENS = {
    token_hash(SMALL_ONLY): TokenRecord(
        "t-small", frozenset({"*"}), frozenset(), models=frozenset({"small"})
    ),
    token_hash(ANY_MODEL): TokenRecord("t-any", frozenset({"*"}), frozenset()),
}


def run(route: str, token: str | None, raw: bytes | None, method: str = "POST") -> Decision:
    path = "/v1/models" if method == "GET" else "/v1/chat/completions"
    llm = None if raw is None else read_model_request(raw, method, path)
    auth = None if token is None else f"Bearer {token}"
    facts = RequestFacts(
        route, authorization=auth, llm=llm, identity_headers_sent=("x-extauthz-model",)
    )
    return decide(facts, SNAPSHOT, TOKENS.get, NOW)


@pytest.mark.parametrize(
    ("route", "token", "raw", "method", "status", "reason"),
    [
        ("llm", SMALL_ONLY, b'{"model": "small"}', "POST", 200, "granted"),
        ("llm", ANY_MODEL, b'{"model": "big-70b"}', "POST", 200, "granted"),
        ("llm", SMALL_ONLY, b'{"model": "big-70b"}', "POST", 403, "model_not_allowed"),
        ("llm", ANY_MODEL, b'{"model": "other"}', "POST", 404, "model_not_found"),
        ("llm", ANY_MODEL, b'{"model": "Small"}', "POST", 404, "model_not_found"),
        ("llm", ANY_MODEL, b"", "POST", 400, "model_required"),
        ("llm", ANY_MODEL, b"not json", "POST", 400, "model_required"),
        ("llm", ANY_MODEL, b'{"model": "small", "model": "small"}', "POST", 400, "model_required"),
        ("llm", ANY_MODEL, None, "POST", 400, "model_required"),  # never read: fail closed
        ("llm", ANY_MODEL, b"", "GET", 200, "granted"),  # GET /v1/models
        ("llm", None, b'{"model": "small"}', "POST", 401, "no_credential"),  # 401 first
        ("llm", "eat_unknown", b"garbage", "POST", 401, "unknown_token"),
        ("llm-any", SMALL_ONLY, b'{"model": "whatever"}', "POST", 403, "model_not_allowed"),
        ("llm-any", ANY_MODEL, b'{"model": "whatever"}', "POST", 200, "granted"),
        ("llm-open", None, b'{"model": "small"}', "POST", 200, "public"),
        ("llm-open", None, b'{"model": "big"}', "POST", 404, "model_not_found"),
        ("llm-open", None, b"", "POST", 400, "model_required"),
        ("plain", ANY_MODEL, None, "POST", 200, "granted"),  # not an LLM route: no body read
    ],
)
def test_llm_decision_table(
    route: str, token: str | None, raw: bytes | None, method: str, status: int, reason: str
) -> None:
    decision = run(route, token, raw, method)
    assert (decision.status, decision.reason) == (status, reason)
    if status in (400, 403, 404) and reason.startswith("model"):
        assert json.loads(decision.body)["error"] == reason
    if status == 200:
        headers = dict(decision.headers)
        model = None if raw is None else read_model_request(raw, method).model
        assert headers.get("x-extauthz-model") == model
        assert dict(decision.metadata).get("model") == model
        # a client's own x-extauthz-model never reaches the model server
        assert model is not None or "x-extauthz-model" in decision.remove_headers


def test_policy_and_records_check_models() -> None:
    for text, key in (
        ("  r: {access: protected, models: [a]}", "routes.r.models"),
        ("  r: {access: protected, api: grpc}", "routes.r.api"),
        ("  r: {access: protected, api: openai, models: []}", "routes.r.models"),
        ("  r: {access: protected, api: openai, models: ['*']}", "routes.r.models"),
        ("  r: {access: protected, api: openai, models: ['a b']}", "routes.r.models"),
    ):
        with pytest.raises(PolicyError, match=key.replace(".", r"\.")):
            parse_policy(f"version: 1\nroutes:\n{text}\n")
    round_trip = PolicySnapshot.from_json(SNAPSHOT.to_json())
    assert round_trip.routes["llm"].models == ("small", "big-*") and round_trip.llm_routes == {
        "llm",
        "llm-any",
        "llm-open",
    }
    fields = {"id": "t", "routes": "*", "models": "small,big-*"}
    assert TokenRecord.from_fields(fields).models == frozenset({"small", "big-*"})
    assert TokenRecord.from_fields({"id": "t", "routes": "*"}).models is None
    assert TokenRecord.from_fields({**fields, "models": ""}).models == frozenset()  # none
    for bad in ("a b c *", "x*y", "\x1b[2J"):
        with pytest.raises(MalformedRecord):
            TokenRecord.from_fields({**fields, "models": bad})
    record = TokenRecord("t", frozenset({"*"}), frozenset(), models=frozenset({"m"}))
    assert TokenRecord.from_fields(record.to_fields()) == record


def test_token_models_through_create_update_export_import(store: Store, tmp_path: Path) -> None:
    publish_routes(store, llm=["llm"])
    made = tokens.create(store, ["llm"], models=["small", "big-*"], token_id="m1", now=NOW)
    assert made.record.models == frozenset({"small", "big-*"})
    assert store.token_record(token_hash(made.token)).models == frozenset({"small", "big-*"})  # type: ignore[union-attr]
    assert tokens.update(store, "m1", name="n", now=NOW).record.models == frozenset(
        {"small", "big-*"}
    )
    assert tokens.update(store, "m1", models=["small"], now=NOW).record.models == frozenset(
        {"small"}
    )
    assert tokens.update(store, "m1", models=None, now=NOW).record.models is None
    tokens.update(store, "m1", models=["small"], now=NOW)
    with pytest.raises(InvalidValue, match="model"):
        tokens.create(store, ["llm"], models=["a b"], now=NOW)
    (line,) = export_lines(store)
    assert json.loads(line)["models"] == ["small"]
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({**json.loads(line), "models": ["big-*"]}) + "\n")
    plan = plan_import(store, read_import_file(str(path), NOW), str(path), NOW)
    TokenIndex(store).write_many(plan.items)
    assert tokens.show(store, "m1").models == frozenset({"big-*"})
    path.write_text(json.dumps({**json.loads(line), "models": ["*"]}) + "\n")
    with pytest.raises(BadImportLine, match="models"):
        read_import_file(str(path), NOW)


def test_usage_is_counted_per_model(store: Store) -> None:
    publish_routes(store, llm=["llm"])
    from extauthz.runtime.usage import UsageMeter

    now = time.time()
    meter = UsageMeter(store)
    tokens.create(store, ["llm"], token_id="u", now=now)
    for model in ("small", "small", "big-7b"):
        meter.count("u", True, now, model)
    meter.count("u", False, now, "small")  # refused by a rate limit: no model count
    assert meter.flush() is True
    (today,) = tokens.usage(store, "u", 1, now)["days"]
    assert today["allowed"] == 3 and today["rate_limited"] == 1
    assert today["models"] == {"big-7b": {"requests": 1}, "small": {"requests": 2}}


def test_stream_usage_require_asks_only_streams_that_did_not_say() -> None:
    document = parse_policy(
        "version: 1\nroutes:\n"
        "  asks: {access: public, api: openai, stream_usage: require}\n"
        "  counts: {access: public, api: openai}\n"
    )
    snapshot = PolicySnapshot(1, document.routes)

    def edits(route: str, body: dict[str, object]) -> dict[str, object]:
        """What the decision's edit sets in `body` (keys new or changed)."""
        raw = json.dumps(body).encode()
        facts = RequestFacts(route, llm=read_model_request(raw))
        metadata = dict(decide(facts, snapshot, lambda _: None, NOW).metadata)
        edited = (
            json.loads(apply_splices(raw, metadata["edit"]) or b"") if "edit" in metadata else body
        )
        return {k: v for k, v in edited.items() if body.get(k, ...) != v}

    stream: dict[str, object] = {"model": "m", "stream": True}
    asked = {"stream_options": {"include_usage": True}}
    assert edits("asks", stream) == asked
    assert edits("asks", {**stream, "stream_options": None}) == asked  # (null is absent)
    cases: list[tuple[str, dict[str, object]]] = [
        ("asks", {"model": "m"}),  # not a stream
        ("asks", {**stream, "stream_options": {"include_usage": False}}),  # it said
        ("counts", stream),
    ]
    for route, body in cases:
        assert "stream_options" not in edits(route, body), (route, body)
    for bad, message in (
        ("stream_usage: always", "require or count"),
        ("stream_usage: [require]", "stream_usage"),
    ):
        with pytest.raises(PolicyError, match=message):
            parse_policy(
                f"version: 1\nroutes:\n  r:\n    access: public\n    api: openai\n    {bad}\n"
            )
    with pytest.raises(PolicyError, match=r":5: .*stream_usage.*api: openai"):
        parse_policy("version: 1\nroutes:\n  r:\n    access: public\n    stream_usage: require\n")


@pytest.mark.parametrize("pad", [False, True], ids=["parsed", "scanned"])
@pytest.mark.parametrize(
    ("path", "extra"),
    [
        # LiteLLM acts on each of these: another model, no cap, more generations
        ("/v1/chat/completions", {"fallbacks": [{"model": "big", "max_tokens": 100000}]}),
        ("/v1/chat/completions", {"extra_body": {"max_tokens": 100000, "n": 3}}),
        ("/v1/chat/completions", {"additional_drop_params": ["max_tokens"]}),
        ("/v1/chat/completions", {"timeout": 0.5, "num_retries": 4}),
        ("/v1/chat/completions", {"context_window_fallbacks": []}),
        ("/v1/chat/completions", {"metadata": {"tags": ["big"]}}),
        ("/v1/chat/completions", {"mock_response": "free"}),
        ("/v1/chat/completions", {"web_search_options": {}}),  # (input not in the body)
        ("/v1/chat/completions", {"Messages": []}),  # (a case variant of a field)
        ("/v1/responses", {"previous_response_id": "resp_1"}),  # (input not in the body)
        ("/v1/responses", {"conversation": "conv_1"}),
        ("/v1/responses", {"prompt": {"id": "pmpt_1"}}),
        ("/v1/embeddings", {"max_tokens": 5, "n_predict": 5}),
    ],
)
def test_keys_a_server_acts_on_that_extauthz_does_not_bound_are_refused(
    path: str, extra: dict[str, object], pad: bool
) -> None:
    found = read_model_request(body({"model": "m", **extra}, pad), "POST", path)
    assert (found.model, found.error) == (None, INVALID)
    assert next(iter(extra)) in found.message


def test_what_else_a_lenient_server_could_read_differently() -> None:
    json_body = b'{"model": "m", "messages": []}'
    for content_type in ("application/json; charset=utf-7", "application/json; x=1"):
        assert (
            read_model_request(json_body, content_type=content_type).error
            == "unsupported_media_type"
        )
    assert read_model_request(json_body, content_type='application/json; charset="UTF-8"').model
    assert read_model_request(b'{"model": "a,b"}').error == BAD_MODEL  # (LiteLLM: a batch)
    many = b"{" + b"".join(b'"k%d": 0, ' % i for i in range(70)) + b'"model": "m"}'
    padded = many.replace(b"{", b'{"user": "' + BIG.encode() + b'", ', 1)
    assert read_model_request(padded).message == "more than 64 top-level keys"
    prompts = json.dumps({"model": "m", "prompt": ["p"] * 2049, "max_tokens": 1}).encode()
    assert read_model_request(prompts, "POST", "/v1/completions").error == INVALID
    # the Responses API reports usage in every stream: it is never asked for it
    asked = read_model_request(b'{"model": "m", "stream": true}', "POST", "/v1/responses")
    assert asked.model == "m" and not asked.usage_asked
