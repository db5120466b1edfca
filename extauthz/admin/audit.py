"""The audit log: every change made through the CLI or the sync job (and, later, the
management API) appends `{time, actor, action, target, detail}` to the capped Redis stream
`{prefix}audit`. Never a secret: ids, route and scope names, lifetimes, counts.

The actor is `cli:<user>` for the command line (the operating-system user), or whoever the
caller names. The event is appended right after the change it records; if Redis refuses
the append the change stands, and is delivered (a new secret is never lost), with a warning
that the audit failed.
"""

from __future__ import annotations

import getpass
import json
import math
import re
import time
from collections.abc import Mapping
from typing import Any

from extauthz.core.token_record import MAX_UNIX_SECONDS
from extauthz.errors import StoreError
from extauthz.storage.store import Store

MAX_EVENTS = 100_000  # the stream is trimmed to about this many (oldest first)


_USER = re.compile(r"[A-Za-z0-9._@+-]{1,64}", re.ASCII)


def cli_actor() -> str:
    """`cli:<user>` for changes made from this machine's command line. The name comes from
    the environment (LOGNAME, USER): one that is not a plain user name is shown quoted, so
    it can never read as more fields of an event."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no name for this uid (containers)
        user = "unknown"
    return f"cli:{user if _USER.fullmatch(user) else json.dumps(readable(user))}"


def readable(text: str) -> str:
    """`text` as it can be shown anywhere: bytes that were not UTF-8 (read back as lone
    surrogates) become backslash escapes."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def event(
    actor: str | None,
    action: str,
    target: str,
    detail: Mapping[str, Any] | None = None,
    now: float | None = None,
) -> dict[str, str]:
    """One event's stream fields (`actor` None: the command line's user)."""
    return {
        "time": str(int(now if now is not None else time.time())),
        "actor": readable(actor or cli_actor()),
        "action": action,
        "target": readable(target),
        "detail": json.dumps(dict(detail or {}), sort_keys=True),
    }


def record(
    store: Store,
    actor: str | None,
    action: str,
    target: str,
    detail: Mapping[str, Any] | None = None,
    now: float | None = None,
) -> str | None:
    """Append one event. The change it records is done already, so a failed append never
    undoes or hides it: the answer is then a warning to pass on to the caller (else None)."""
    try:
        store.append_audit(event(actor, action, target, detail, now), MAX_EVENTS)
    except StoreError as e:
        return f"{action} {readable(target)} done, but its audit event was not written: {e}"
    return None


def tail(store: Store, limit: int) -> list[dict[str, Any]]:
    """The newest `limit` events, oldest first, with their stream ids. Events edited by hand
    are shown as well as they can be: text escaped, a time that is not unix seconds None, a
    detail that is not a JSON object `{"unreadable": text}`."""
    events = []
    for event_id, fields in store.read_audit(limit):
        text = {k: readable(v) for k, v in fields.items() if isinstance(v, str)}
        try:
            detail = json.loads(text.get("detail", "{}"))
        except (ValueError, RecursionError):
            detail = None
        if not isinstance(detail, dict):  # (JSON, but not an object: edited by hand)
            detail = {"unreadable": text.get("detail", "")}
        events.append(
            {
                "id": readable(event_id),
                "time": _unix_seconds(text.get("time", "")),
                "actor": text.get("actor", ""),
                "action": text.get("action", ""),
                "target": text.get("target", ""),
                "detail": detail,
            }
        )
    return events[::-1]


def _unix_seconds(text: str) -> int | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if math.isfinite(value) and 0 <= value <= MAX_UNIX_SECONDS else None
