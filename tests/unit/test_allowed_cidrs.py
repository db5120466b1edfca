"""`allowed_cidrs` on tokens and teams: parsing, records, the decision and its memo."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from extauthz.admin import teams, tokens
from extauthz.admin.sync import sync
from extauthz.core.cidrs import MAX_CIDRS, AllowedCidrs
from extauthz.core.credentials import token_hash
from extauthz.core.decision import RequestFacts, decide
from extauthz.core.policy import PolicySnapshot, parse_policy
from extauthz.core.rate_limit import RateLimit
from extauthz.core.route_policy import Access, RoutePolicy
from extauthz.core.team_record import TeamRecord
from extauthz.core.token_record import TokenRecord
from extauthz.errors import InvalidValue, MalformedRecord
from extauthz.runtime.authorizer import Authorizer
from extauthz.storage.store import Store
from extauthz.storage.token_cache import TokenCache


@pytest.mark.parametrize(
    "bad",
    [
        "10.0.0.1/8",  # host bits set
        "10.0.0.0/33",
        "2001:db8::/129",
        "fe80::1%eth0",  # a zone
        "010.0.0.0/8",  # a leading zero (octal to some parsers)
        "١٠.0.0.0/8",  # non-ASCII digits
        "10.0.0.0/8\n",
        "10.0.0.0/8\x00",
        "",
        "none",
        "x" * 10_000,
        "10.0.0.0/-1",
        "10.0.0.0/99999999999999999999",
    ],
)
def test_bad_networks_are_refused_with_the_rule(bad: str) -> None:
    with pytest.raises(ValueError, match=r"network|host bits|zone") as e:
        AllowedCidrs.parse([bad])
    assert "\n" not in str(e.value) and len(str(e.value)) < 300


def test_too_many_or_none() -> None:
    ok = [f"10.0.{i}.0/24" for i in range(MAX_CIDRS)]
    assert len(AllowedCidrs.parse(ok).networks) == MAX_CIDRS
    with pytest.raises(ValueError, match=f"more than {MAX_CIDRS}"):
        AllowedCidrs.parse([*ok, "10.1.0.0/24"])
    with pytest.raises(ValueError, match="no network"):
        AllowedCidrs.parse([])


def test_membership_ipv4_ipv6_and_mapped() -> None:
    cidrs = AllowedCidrs.parse(["127.0.0.1", "10.0.0.0/8", "2001:db8::/32"])
    assert cidrs.texts() == ["127.0.0.1/32", "10.0.0.0/8", "2001:db8::/32"]
    for address in ("127.0.0.1", "10.255.0.1", "::ffff:10.1.2.3", "2001:db8::1"):
        assert cidrs.allows(address), address
    for address in ("127.0.0.2", "11.0.0.1", "::1", "2001:db9::1", "", "garbage", "10.0.0.1\x00"):
        assert not cidrs.allows(address), address
    assert not AllowedCidrs.parse(["::/0"]).allows("192.0.2.1")  # v6 networks never hold v4


def test_record_fields_round_trip_and_hand_edits_are_checked() -> None:
    record = TokenRecord("t", frozenset({"m"}), frozenset(), allowed_cidrs=AllowedCidrs.parse(
        ["192.0.2.0/24", "2001:db8::/32"]))  # fmt: skip
    fields = record.to_fields()
    assert fields["allowed_cidrs"] == "192.0.2.0/24,2001:db8::/32"
    assert TokenRecord.from_fields(fields) == record
    assert record.to_json()["allowed_cidrs"] == ["192.0.2.0/24", "2001:db8::/32"]
    assert TokenRecord.from_fields({**fields, "allowed_cidrs": " "}).allowed_cidrs is None
    for bad in ("10.0.0.1/8", "nonsense", " ".join(f"10.0.{i}.0/24" for i in range(40))):
        with pytest.raises(MalformedRecord, match="allowed_cidrs"):
            TokenRecord.from_fields({**fields, "allowed_cidrs": bad})
    team = TeamRecord("t1", allowed_cidrs=AllowedCidrs.parse(["10.0.0.0/8"]))
    assert TeamRecord.from_fields("t1", team.to_fields()) == team


NOW = 1_700_000_000.0
ROUTE = RoutePolicy("m", Access.PROTECTED, rate_limit=RateLimit.parse("100/m"))
SNAPSHOT = PolicySnapshot(1, {"m": ROUTE})
LOOPBACK = AllowedCidrs.parse(["127.0.0.1"])
RECORDS = {
    token_hash("eat_bound"): TokenRecord("bound", frozenset({"m"}), frozenset(),
                                         allowed_cidrs=LOOPBACK),
    token_hash("eat_free"): TokenRecord("free", frozenset({"m"}), frozenset(), team="ten"),
    token_hash("eat_both"): TokenRecord("both", frozenset({"m"}), frozenset(), team="ten",
                                        allowed_cidrs=AllowedCidrs.parse(["10.1.0.0/16"])),
}  # fmt: skip
TEAMS = {"ten": TeamRecord("ten", allowed_cidrs=AllowedCidrs.parse(["10.0.0.0/8"]))}


def run(token: str, address: str) -> Any:
    facts = RequestFacts("m", source_address=address, authorization=f"Bearer {token}")
    return decide(facts, SNAPSHOT, RECORDS.get, NOW, None, TEAMS.get)


@pytest.mark.parametrize(
    ("token", "address", "status"),
    [
        ("eat_bound", "127.0.0.1", 200),
        ("eat_bound", "127.0.0.2", 403),
        ("eat_bound", "", 403),  # not read: in no network (the runtime reads it, see below)
        ("eat_free", "10.9.9.9", 200),  # its team's list
        ("eat_free", "192.0.2.1", 403),
        ("eat_both", "10.1.2.3", 200),  # in both
        ("eat_both", "10.2.0.1", 403),  # in the team's, not the token's
    ],
)
def test_the_decision(token: str, address: str, status: int) -> None:
    d = run(token, address)
    assert d.status == status
    if status == 403:
        assert d.reason == "address_not_allowed" and d.limits == () and d.token_id is None
        assert '"address_not_allowed"' in d.body
    else:
        assert d.limits  # the route's limit is taken only when allowed


class Peer:
    """Envoy's attributes as the Check handler hands them on (the address, read lazily)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.reads = 0

    @property
    def source(self) -> Any:
        self.reads += 1
        return SimpleNamespace(address=SimpleNamespace(socket_address=self))

    @property
    def context_extensions(self) -> dict[str, str]:
        return {}


def test_the_memo_never_answers_one_address_for_another(store: Store) -> None:
    sync(store, parse_policy("version: 1\nroutes:\n  m: {access: protected}\n"))
    cache = TokenCache(store.token_record, fetch_team=store.team_record)
    cache.set_channel_ok(True)
    auth = Authorizer(store, None, cache, clock=lambda: NOW)
    auth.refresh_policy()
    bound = tokens.create(store, ["m"], now=NOW, allowed_cidrs=["127.0.0.1"]).token
    free = tokens.create(store, ["m"], now=NOW).token
    inside, outside = Peer("127.0.0.1"), Peer("127.0.0.2")
    facts = RequestFacts("m", authorization=f"Bearer {bound}")
    for _ in range(5):  # alternating, remembered: each address keeps its own answer
        assert auth.decide(facts, peer=inside).status == 200
        assert auth.decide(facts, peer=outside).status == 403
    assert auth.reused >= 16
    # a token without allowed_cidrs never has the address read
    plain = Peer("127.0.0.2")
    for _ in range(3):
        assert (
            auth.decide(RequestFacts("m", authorization=f"Bearer {free}"), peer=plain).status == 200
        )
    assert plain.reads == 0
    # a team's list applies to its tokens, and a change reaches the decision
    teams.create(store, "lab", allowed_cidrs=["10.0.0.0/8"])
    member = tokens.create(store, ["m"], now=NOW, team="lab").token
    cache.clear()
    assert (
        auth.decide(RequestFacts("m", authorization=f"Bearer {member}"), peer=inside).status == 403
    )
    teams.update(store, "lab", allowed_cidrs=None)
    cache.invalidate_team("lab")
    assert (
        auth.decide(RequestFacts("m", authorization=f"Bearer {member}"), peer=inside).status == 200
    )


def test_the_surfaces_refuse_bad_lists(store: Store) -> None:
    sync(store, parse_policy("version: 1\nroutes:\n  m: {access: protected}\n"))
    with pytest.raises(InvalidValue, match="host bits"):
        tokens.create(store, ["m"], now=NOW, allowed_cidrs=["10.0.0.1/8"])
    with pytest.raises(InvalidValue, match="no network"):
        teams.create(store, "lab", allowed_cidrs=[])
    made = tokens.create(store, ["m"], now=NOW, allowed_cidrs=["10.0.0.0/8"]).record
    kept = tokens.update(store, made.id, name="x", now=NOW).record
    assert kept.allowed_cidrs == made.allowed_cidrs
    assert tokens.update(store, made.id, allowed_cidrs=None, now=NOW).record.allowed_cidrs is None
