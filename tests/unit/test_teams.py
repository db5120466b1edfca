"""Teams, pure and with fakeredis: the record as Redis holds it (edited by hand too), what a
token's team changes in the decision (models of both, pooled limits, an unknown team), the
limits pooled across the team's tokens, and the team in the token cache."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest

from extauthz.core.credentials import token_hash
from extauthz.core.decision import Decision, Outcome, RequestFacts, decide
from extauthz.core.limits import REQUESTS, TOKENS
from extauthz.core.llm import read_model_request
from extauthz.core.policy import PolicySnapshot, parse_policy
from extauthz.core.rate_limit import RateLimit
from extauthz.core.team_record import TeamRecord
from extauthz.core.token_limit import TokenLimit
from extauthz.core.token_record import TokenRecord
from extauthz.errors import MalformedRecord
from extauthz.runtime.limiter import Limiter
from extauthz.storage.client import DECODING
from extauthz.storage.redis_health import RedisHealth
from extauthz.storage.store import Store
from extauthz.storage.token_cache import TokenCache

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
