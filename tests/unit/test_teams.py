"""Teams, pure and with fakeredis: the record as Redis holds it (edited by hand too), what a
token's team changes in the decision (models of both, pooled limits, an unknown team), the
limits pooled across the team's tokens, and the team in the token cache."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import fakeredis
import pytest

from extauthz.admin import audit, teams, tokens
from extauthz.core.credentials import token_hash
from extauthz.core.decision import Decision, Outcome, RequestFacts, decide
from extauthz.core.jwt_verify import JwtIdentity
from extauthz.core.limits import REQUESTS, TOKENS
from extauthz.core.llm import read_model_request
from extauthz.core.llm_usage import Usage
from extauthz.core.policy import PolicySnapshot, parse_policy
from extauthz.core.rate_limit import RateLimit
from extauthz.core.team_record import TeamRecord
from extauthz.core.token_limit import TokenLimit
from extauthz.core.token_record import TokenRecord
from extauthz.errors import (
    InvalidValue,
    MalformedRecord,
    PolicyError,
    TeamExists,
    TeamHasTokens,
    UnknownTeam,
)
from extauthz.runtime.limiter import Limiter
from extauthz.runtime.usage import UsageMeter
from extauthz.storage.client import DECODING
from extauthz.storage.redis_health import RedisHealth
from extauthz.storage.store import Store
from extauthz.storage.token_cache import TokenCache
from extauthz.storage.token_index import TokenIndex

START = 1_800_000_000.0
POLICY = PolicySnapshot(
    1,
    parse_policy(
        "version: 1\nroutes:\n"
        "  llm: {access: protected, api: openai}\n"
        "  plain: {access: protected}\n"
    ).routes,
)
TEAM = TeamRecord(
    "acme",
    "Acme",
    models=frozenset({"small", "mid*"}),
    rate_limit=RateLimit(3, "m"),
    token_limit=TokenLimit(1000, "m"),
)


def _token(secret: str, **kw: Any) -> tuple[str, TokenRecord]:
    return token_hash(secret), TokenRecord(secret, frozenset({"*"}), frozenset(), **kw)


def _decide(
    secret: str,
    records: dict[str, TokenRecord],
    teams: dict[str, TeamRecord],
    model: str | None = "small",
    route: str = "llm",
) -> Decision:
    llm = None
    if model is not None:
        llm = read_model_request(f'{{"model": "{model}", "max_tokens": 10}}'.encode())
    facts = RequestFacts(route, authorization=f"Bearer {secret}", llm=llm)
    return decide(facts, POLICY, records.get, START, None, teams.get)


# --- the record ---------------------------------------------------------------------------


def test_a_team_record_round_trips_through_its_fields() -> None:
    fields = TEAM.to_fields()
    assert fields == {
        "id": "acme",
        "name": "Acme",
        "models": "mid*,small",
        "rate_limit": "3/m",
        "token_limit": "1000/m",
    }
    assert TeamRecord.from_fields("acme", fields) == TEAM
    assert TeamRecord.from_fields("bare", {"name": ""}) == TeamRecord("bare")


@pytest.mark.parametrize(
    ("team_id", "fields", "says"),
    [
        ("Acme", {"name": "x"}, "not a team id"),
        ("-acme", {"name": "x"}, "not a team id"),
        ("a" * 64, {"name": "x"}, "not a team id"),
        ("acme", {"id": "other"}, "its 'id' field says"),
        ("acme", {"name": "bell\x07"}, "'name' is not printable"),
        ("acme", {"models": "ok,\udcff"}, "'models'"),
        ("acme", {"rate_limit": "3 per minute"}, "'rate_limit'"),
        ("acme", {"token_limit": "-5/m"}, "'token_limit'"),
        ("acme", {"created_at": "yesterday"}, "'created_at'"),
    ],
)
def test_a_team_record_edited_badly_by_hand_is_malformed(
    team_id: str, fields: dict[str, str], says: str
) -> None:
    with pytest.raises(MalformedRecord, match=says):
        TeamRecord.from_fields(team_id, fields)


@pytest.mark.parametrize("team", ["acme", "a", "team-9", "0"])
def test_a_token_names_its_team(team: str) -> None:
    record = TokenRecord.from_fields({"id": "t", "routes": "*", "team": team})
    assert record.team == team and record.to_fields()["team"] == team
    assert record.to_json()["team"] == team


@pytest.mark.parametrize("team", ["Acme", "-x", "a b", "a" * 64, "\udcff"])
def test_a_token_naming_no_valid_team_is_malformed(team: str) -> None:
    with pytest.raises(MalformedRecord, match="'team' is not a team id"):
        TokenRecord.from_fields({"id": "t", "routes": "*", "team": team})


# --- the decision -------------------------------------------------------------------------


def test_a_token_may_use_only_the_models_both_it_and_its_team_allow() -> None:
    any_model = dict([_token("any", team="acme")])
    some = dict([_token("some", team="acme", models=frozenset({"small", "large"}))])
    teams = {"acme": TEAM}
    assert _decide("any", any_model, teams, "small").outcome is Outcome.ALLOW
    assert _decide("any", any_model, teams, "mid-2").outcome is Outcome.ALLOW
    refused = _decide("any", any_model, teams, "large")
    assert (refused.status, refused.reason) == (403, "model_not_allowed")
    assert "team" in refused.body
    assert _decide("some", some, teams, "small").outcome is Outcome.ALLOW
    assert _decide("some", some, teams, "large").status == 403  # (the token's, not the team's)
    assert _decide("some", some, teams, "mid-2").status == 403  # (the team's, not the token's)


def test_a_token_whose_team_does_not_exist_is_refused_on_every_route() -> None:
    records = dict([_token("orphan", team="gone")])
    for route, model in (("llm", "small"), ("plain", None)):
        refused = _decide("orphan", records, {}, model, route)
        assert (refused.status, refused.reason) == (403, "unknown_team")


def test_the_teams_limits_apply_to_each_of_its_tokens_beside_their_own() -> None:
    records = dict([_token("t1", team="acme", rate_limit=RateLimit(100, "m"))])
    allow = _decide("t1", records, {"acme": TEAM})
    assert [(x.kind, x.scope, str(x.limit)) for x in allow.limits] == [
        (REQUESTS, "token:t1", "100/m"),
        (REQUESTS, "team:acme", "3/m"),
        (TOKENS, "team:acme", "1000/m"),
    ]
    plain = _decide("t1", records, {"acme": TEAM}, None, "plain")
    assert [x.scope for x in plain.limits] == ["token:t1", "team:acme"]  # (no tokens: no model)
    assert _decide("t1", dict([_token("t1")]), {"acme": TEAM}).limits == ()


def test_a_teams_limit_is_pooled_across_its_tokens_and_processes() -> None:
    records = dict([_token("a", team="acme"), _token("b", team="acme"), _token("c")])
    store = Store(fakeredis.FakeRedis(**DECODING), "extauthz:")
    processes = [Limiter(store), Limiter(store)]
    answers = [
        processes[i % 2].admit(_decide(secret, records, {"acme": TEAM}), START + 1).status
        for i, secret in enumerate(["a", "b", "a", "b", "a"])
    ]
    assert answers == [200, 200, 200, 429, 429]  # 3/m for the team, whichever token
    refused = processes[0].admit(_decide("b", records, {"acme": TEAM}), START + 2)
    assert refused.reason == "rate_limited" and "team acme" in refused.body
    assert processes[1].admit(_decide("c", records, {}), START + 2).status == 200  # no team


# --- the cache ----------------------------------------------------------------------------


def test_a_team_is_cached_and_dropped_when_it_changes() -> None:
    fetched: list[str] = []

    def fetch_team(team_id: str) -> TeamRecord | None:
        fetched.append(team_id)
        return TEAM if team_id == "acme" else None

    health = RedisHealth()
    health.channel_subscribed(True)
    health.store_answered(True)
    cache = TokenCache(lambda digest: None, health=health, fetch_team=fetch_team)
    epoch = cache.current_epoch
    assert cache.team("acme") == TEAM and cache.team("acme") == TEAM
    assert cache.team("nope") is None and cache.team("nope") is None
    assert fetched == ["acme", "nope"]
    cache.invalidate_team("acme")
    assert cache.current_epoch != epoch  # (decisions remembered before are not reused)
    assert cache.team("acme") == TEAM and fetched == ["acme", "nope", "acme"]


# --- the lifecycle (admin/teams.py, storage/team_index.py) ---------------------------------


def _store() -> Store:
    return Store(fakeredis.FakeRedis(**DECODING), "extauthz:")


def _member(store: Store, token_id: str, team: str | None) -> None:
    record = TokenRecord(token_id, frozenset({"*"}), frozenset(), team=team)
    TokenIndex(store).add(token_hash(token_id), record)


def test_create_show_update_list() -> None:
    store = _store()
    made = teams.create(store, "acme", "Acme", ["small"], RateLimit(3, "m"), None, START)
    assert made.record == TeamRecord("acme", "Acme", frozenset({"small"}), RateLimit(3, "m"),
                                     None, int(START))  # fmt: skip
    with pytest.raises(TeamExists):
        teams.create(store, "acme")
    teams.create(store, "beta", now=START + 1)
    assert teams.show(store, "acme") == made.record
    with pytest.raises(UnknownTeam):
        teams.show(store, "nope")
    with pytest.raises(InvalidValue, match="team"):
        teams.show(store, "Not An Id")
    changed = teams.update(store, "acme", models=None, token_limit=TokenLimit(500, "d"))
    assert changed.record.models is None and changed.record.rate_limit == RateLimit(3, "m")
    assert store.team_record("acme") == changed.record  # (what the servers read)
    with pytest.raises(UnknownTeam):
        teams.update(store, "nope", name="x")
    assert [t.id for t in teams.listing(store) if isinstance(t, TeamRecord)] == ["acme", "beta"]
    store.client.hset("extauthz:team:beta", "rate_limit", "fast")  # edited badly by hand
    listed = list(teams.listing(store))
    assert isinstance(listed[1], MalformedRecord) and "beta" in str(listed[1])
    actions = [e["action"] for e in audit.tail(store, 10)]
    assert actions.count("team.create") == 2 and "team.update" in actions


def test_a_teams_tokens_are_found_without_a_scan_and_left_ones_are_dropped() -> None:
    store = _store()
    teams.create(store, "acme")
    for token_id in ("t1", "t2", "t3"):
        _member(store, token_id, "acme")
    _member(store, "other", None)
    assert teams.members(store, "acme") == ["t1", "t2", "t3"]
    tokens.revoke(store, "t2")
    TokenIndex(store).update("t3", lambda r: replace(r, team=None))  # moved out
    assert teams.members(store, "acme") == ["t1"]
    assert store.client.smembers("extauthz:team-tokens:acme") == {"t1"}


def test_delete_is_refused_while_the_team_has_tokens_unless_they_are_revoked() -> None:
    store = _store()
    teams.create(store, "acme")
    _member(store, "t1", "acme")
    with pytest.raises(TeamHasTokens, match=r"1 token:.*--revoke-tokens"):
        teams.delete(store, "acme")
    assert store.team_record("acme") is not None
    teams.delete(store, "acme", revoke_tokens=True)
    assert store.team_record("acme") is None and not store.client.exists("extauthz:token-id:t1")
    assert not store.client.exists("extauthz:team-tokens:acme")
    assert list(teams.listing(store)) == []
    with pytest.raises(UnknownTeam):
        teams.delete(store, "acme")


def test_a_teams_usage_is_its_tokens_summed_per_day_and_model() -> None:
    store = _store()
    teams.create(store, "acme")
    _member(store, "t1", "acme")
    _member(store, "t2", "acme")
    meter = UsageMeter(store, flush_every=10**9)
    for token_id in ("t1", "t2", "t2"):
        meter.count(token_id, True, START, "small")
    meter.charge("t1", "small", START, Usage(10, 5))
    meter.charge("t2", "small", START, Usage(1, 2))
    assert meter.flush()
    used = teams.usage(store, "acme", 2, START)
    assert used["tokens"] == 2 and len(used["days"]) == 2
    today = used["days"][-1]
    assert today["allowed"] == 3
    small = today["models"]["small"]
    assert small["requests"] == 3
    assert small["prompt_tokens"] == 11 and small["completion_tokens"] == 7


# --- JWT callers ---------------------------------------------------------------------------

JWT_POLICY = PolicySnapshot(
    1,
    parse_policy(
        "version: 1\nroutes:\n"
        "  llm:\n    access: protected\n    api: openai\n    credentials: [jwt]\n"
        "    jwt: {issuer: 'https://idp.example', audiences: [m], jwks_file: /dev/null,"
        " team_claim: org.team}\n"
    ).routes,
)


def _no_tokens(digest: str) -> TokenRecord | None:
    return None


@pytest.mark.parametrize(
    ("team", "status", "reason"),
    [
        ("acme", 200, "granted_jwt"),
        (None, 200, "granted_jwt"),  # (no team named: no team)
        ("gone", 403, "unknown_team"),
        ("Not An Id", 403, "unknown_team"),
        ("?", 403, "unknown_team"),  # (a claim that is not a string)
    ],
)
def test_a_jwt_claim_places_its_caller_in_a_team(
    team: str | None, status: int, reason: str
) -> None:
    def verify(token: str, settings: Any, now: float) -> JwtIdentity:
        assert settings.team_claim == "org.team"
        return JwtIdentity("alice", frozenset(), (), now + 60, team=team)

    llm = read_model_request(b'{"model": "small", "max_tokens": 10}')
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"
    facts = RequestFacts("llm", authorization=f"Bearer {jwt}", llm=llm)
    decided = decide(facts, JWT_POLICY, _no_tokens, START, verify, {"acme": TEAM}.get)
    assert (decided.status, decided.reason) == (status, reason)
    if team == "acme":
        assert "team:acme" in [x.scope for x in decided.limits]
        large = read_model_request(b'{"model": "large", "max_tokens": 10}')
        refused = decide(facts._replace(llm=large), JWT_POLICY, _no_tokens, START, verify,
                         {"acme": TEAM}.get)  # fmt: skip
        assert refused.reason == "model_not_allowed"  # (the team's models)


def test_team_claim_is_a_claim_path_named_with_file_and_line() -> None:
    with pytest.raises(PolicyError, match=r":7: routes.r.jwt.team_claim: not a claim path"):
        parse_policy(
            "version: 1\nroutes:\n  r:\n    access: protected\n    credentials: [jwt]\n    jwt:\n"
            "      {issuer: 'https://i.example', audiences: [a], team_claim: 'a b'}\n"
        )
