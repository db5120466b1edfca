"""The management plane's one authorization function, table-tested: caller × target × action
(docs/design.md#management-plane-authorization)."""

from __future__ import annotations

import itertools

import pytest

from extauthz.admin.access import Action, Manager, Target, Verdict, decide
from extauthz.core.token_record import TokenRecord

HOUR = 3600
NOW = 1_800_000_000


def record(
    routes: str, scopes: str = "", expires: int | None = None, kind: str = "model"
) -> TokenRecord:
    return TokenRecord(
        "t", frozenset(routes.split()), frozenset(scopes.split()), expires_at=expires, kind=kind
    )


CALLERS = {
    "admin": record("*", "admin", kind="management"),
    "manager-ab": record("a b", "tokens:manage", kind="management"),
    "manager-star": record("*", "tokens:manage", kind="management"),
    "manager-ab-1h": record("a b", "tokens:manage", NOW + HOUR, kind="management"),
}
TARGETS = {
    "model-a": record("a", "inference"),
    "model-ab": record("a b"),
    "model-abc": record("a b c"),
    "model-c": record("c"),
    "model-star": record("*", "inference"),
    "model-a-30m": record("a", "", NOW + HOUR // 2),
    "model-a-2h": record("a", "", NOW + 2 * HOUR),
    "admin-a": record("a", "admin", kind="management"),
    "admin-star": record("*", "admin", kind="management"),
    "peer-manager-a": record("a", "tokens:manage", kind="management"),
    # made before kinds: its scopes alone make it a management target
    "legacy-admin-a": record("a", "admin"),
    # hand-edited: kind management with model scopes only is still not a manager's
    "management-kind-a": record("a", "inference", kind="management"),
}
# (caller, target) pairs a manager may act on; an admin may act on every target
MANAGES = {
    ("manager-ab", "model-a"),
    ("manager-ab", "model-ab"),
    ("manager-ab", "model-a-30m"),
    ("manager-ab", "model-a-2h"),
    ("manager-star", "model-a"),
    ("manager-star", "model-ab"),
    ("manager-star", "model-abc"),
    ("manager-star", "model-c"),
    ("manager-star", "model-star"),
    ("manager-star", "model-a-30m"),
    ("manager-star", "model-a-2h"),
    ("manager-ab-1h", "model-a-30m"),  # expires before the manager
}
TOKEN_ACTIONS = (Action.READ, Action.UPDATE, Action.ROTATE, Action.REVOKE, Action.USAGE)


@pytest.mark.parametrize(
    ("caller", "target", "action"),
    list(itertools.product(CALLERS, TARGETS, (*TOKEN_ACTIONS, Action.CREATE))),
)
def test_caller_target_action(caller: str, target: str, action: Action) -> None:
    who = Manager.of(CALLERS[caller])
    assert who is not None
    verdict = decide(who, action, Target.of(TARGETS[target]))
    if caller == "admin" or (caller, target) in MANAGES:
        assert verdict is Verdict.ALLOW
    elif action is Action.CREATE:
        assert verdict is Verdict.FORBIDDEN  # asking for it: told no, nothing hidden
    else:
        assert verdict is Verdict.NOT_FOUND  # somebody else's: not confirmed to exist


@pytest.mark.parametrize("caller", list(CALLERS))
def test_audit_is_for_admins_and_policy_for_every_manager(caller: str) -> None:
    who = Manager.of(CALLERS[caller])
    assert who is not None
    assert decide(who, Action.AUDIT) is (Verdict.ALLOW if who.admin else Verdict.FORBIDDEN)
    assert decide(who, Action.POLICY) is Verdict.ALLOW


@pytest.mark.parametrize(
    "rec",
    [
        record("*", "admin"),  # a model token given `admin` (by hand, or before kinds)
        record("*", "tokens:manage"),
        record("*", "inference"),
        record("*", "inference", kind="management"),  # management kind, no management scope
    ],
)
def test_only_management_tokens_with_a_management_scope_call_the_api(rec: TokenRecord) -> None:
    assert Manager.of(rec) is None


def test_a_managers_expiry_is_the_earlier_of_its_field_and_its_keys_ttl() -> None:
    rec = record("a", "tokens:manage", NOW + 2 * HOUR, kind="management")
    lapsing = TokenRecord(
        rec.id, rec.routes, rec.scopes, rec.expires_at, kind=rec.kind, lapses_at=NOW + HOUR + 0.5
    )
    who = Manager.of(lapsing)
    assert who is not None and who.expires_at == NOW + HOUR
    assert decide(who, Action.CREATE, Target.of(record("a", "", NOW + HOUR))) is Verdict.ALLOW
    late = Target.of(record("a", "", NOW + HOUR + 1))
    assert decide(who, Action.CREATE, late) is Verdict.FORBIDDEN
    assert decide(who, Action.CREATE, Target.of(record("a"))) is Verdict.FORBIDDEN  # never


# --- team managers -------------------------------------------------------------------------


def teamed(routes: str, scopes: str, team: str | None, kind: str = "model") -> TokenRecord:
    base = record(routes, scopes, NOW + HOUR, kind)
    return TokenRecord(
        base.id, base.routes, base.scopes, base.expires_at, kind=base.kind, team=team
    )


TEAM_CALLERS = {
    "admin": teamed("*", "admin", None, "management"),
    "manager": teamed("*", "tokens:manage", None, "management"),
    "acme-manager": teamed("a b", "tokens:manage", "acme", "management"),
    "beta-manager": teamed("*", "tokens:manage", "beta", "management"),
}
TEAM_TARGETS = {
    "plain-a": teamed("a", "", None),
    "acme-a": teamed("a", "", "acme"),
    "acme-c": teamed("c", "", "acme"),  # (outside the acme manager's routes)
    "beta-a": teamed("a", "", "beta"),
}
TEAM_MANAGES = {
    ("manager", "plain-a"),
    ("acme-manager", "acme-a"),
    ("beta-manager", "beta-a"),
}


@pytest.mark.parametrize(
    ("caller", "target", "action"),
    list(itertools.product(TEAM_CALLERS, TEAM_TARGETS, (*TOKEN_ACTIONS, Action.CREATE))),
)
def test_team_managers_act_on_exactly_their_teams_tokens(
    caller: str, target: str, action: Action
) -> None:
    who = Manager.of(TEAM_CALLERS[caller])
    assert who is not None
    verdict = decide(who, action, Target.of(TEAM_TARGETS[target]))
    if caller == "admin" or (caller, target) in TEAM_MANAGES:
        assert verdict is Verdict.ALLOW
    elif action is Action.CREATE:
        assert verdict is Verdict.FORBIDDEN
    else:
        assert verdict is Verdict.NOT_FOUND  # (not its to know about)


@pytest.mark.parametrize("caller", TEAM_CALLERS)
@pytest.mark.parametrize("team", ["acme", "beta", "gamma"])
def test_a_team_is_read_by_admins_and_its_managers_and_written_by_admins_only(
    caller: str, team: str
) -> None:
    who = Manager.of(TEAM_CALLERS[caller])
    assert who is not None
    read = decide(who, Action.TEAM_READ, team=team)
    write = decide(who, Action.TEAM_WRITE, team=team)
    create = decide(who, Action.TEAM_WRITE, team=None)
    assert create is (Verdict.ALLOW if caller == "admin" else Verdict.FORBIDDEN)
    if caller == "admin":
        assert read is write is Verdict.ALLOW
    elif who.team == team:
        assert (read, write) == (Verdict.ALLOW, Verdict.FORBIDDEN)
    else:
        assert read is write is Verdict.NOT_FOUND


@pytest.mark.parametrize("noise", [-0.0009, -0.0004, 0.0, 0.0004, 0.0009])
def test_a_managers_key_ttl_read_a_millisecond_early_or_late_is_its_expiry(noise: float) -> None:
    """Read time + PTTL lands a millisecond either side of the EXPIREAT second: a token made
    with the manager's own expiry is within it, every time."""
    base = record("a", "tokens:manage", NOW + HOUR, kind="management")
    lapsing = TokenRecord(
        base.id, base.routes, base.scopes, base.expires_at, kind=base.kind,
        lapses_at=NOW + HOUR + noise,
    )  # fmt: skip
    who = Manager.of(lapsing)
    assert who is not None and who.expires_at == NOW + HOUR
    assert decide(who, Action.CREATE, Target.of(record("a", "", NOW + HOUR))) is Verdict.ALLOW
