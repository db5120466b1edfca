"""The audit log: every change made through the CLI or the sync job (and, later, the
management API) appends `{time, actor, action, target, detail}` to the capped Redis stream
`{prefix}audit`. Never a secret: ids, route and scope names, lifetimes, counts.

The actor is `cli:<user>` for the command line (the operating-system user), or whoever the
caller names. The event is appended right after the change it records; if Redis refuses
the append the change stands and the command says the audit failed.
"""

from __future__ import annotations

import getpass
import json
import time
from collections.abc import Mapping
from typing import Any

from extauthz.errors import StoreError
from extauthz.storage.store import Store

MAX_EVENTS = 100_000  # the stream is trimmed to about this many (oldest first)


def cli_actor() -> str:
    """`cli:<user>` for changes made from this machine's command line."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no name for this uid (containers)
        user = "unknown"
    return f"cli:{user}"


def record(
    store: Store,
    actor: str | None,
    action: str,
    target: str,
    detail: Mapping[str, Any] | None = None,
    now: float | None = None,
) -> None:
    """Append one event (`actor` None: the command line's user)."""
    event = {
        "time": str(int(now if now is not None else time.time())),
        "actor": actor or cli_actor(),
        "action": action,
        "target": target,
        "detail": json.dumps(dict(detail or {}), sort_keys=True),
    }
    try:
        store.append_audit(event, MAX_EVENTS)
    except StoreError as e:
        raise type(e)(f"{action} {target} done, but its audit event was not written: {e}") from e


def tail(store: Store, limit: int) -> list[dict[str, Any]]:
    """The newest `limit` events, oldest first, with their stream ids."""
    events = []
    for event_id, fields in store.read_audit(limit):
        try:
            detail = json.loads(fields.get("detail", "{}"))
        except ValueError:
            detail = {"unreadable": fields.get("detail", "")}
        events.append(
            {
                "id": event_id,
                "time": int(fields.get("time", "0") or 0),
                "actor": fields.get("actor", ""),
                "action": fields.get("action", ""),
                "target": fields.get("target", ""),
                "detail": detail,
            }
        )
    return events[::-1]
