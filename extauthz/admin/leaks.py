"""Leaked secrets: what a GitHub secret scanning report (`POST /v1/secret-scanning`) and
`extauthz token leaked` do (docs/security.md#when-a-key-leaks).

Each secret is looked up by its SHA-256, all of a report's in one round trip. One of ours is
revoked (the token its record names, every secret of it) or, with `on_leak: notify` in the
policy, left working; either way `notify_leaked` records it. A route secret of the policy is
ours too but lives in the policy file: it is reported (and logged as an error), never
changed here. The answer is GitHub's feedback array. Never a secret in a log or an event:
token ids, and the URL and source GitHub names.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from extauthz.admin import audit
from extauthz.core.secret_scanning import (
    MAX_KEYS_FILE_BYTES,
    Match,
    SigningKeys,
    feedback,
    parse_keys,
)
from extauthz.errors import ConfigError, MalformedRecord
from extauthz.files import describe, read_regular_file
from extauthz.runtime import webhooks
from extauthz.storage.store import Store
from extauthz.storage.token_index import TokenIndex

log = logging.getLogger("extauthz.leaks")

GITHUB_ACTOR = "github:secret-scanning"  # the audit actor of a report's changes


@dataclass(frozen=True, slots=True)
class Handled:
    """What a report did: the feedback to answer, the token ids found (by hash; "" for a
    key whose record names none), and what the caller must know."""

    feedback: list[dict[str, str]]
    found: dict[str, str]
    on_leak: str
    revoked: int  # secrets deleted
    unconfirmed: tuple[str, ...] = ()  # live servers that did not confirm in time
    warnings: tuple[str, ...] = ()


def report(
    store: Store,
    matches: Iterable[Match],
    *,
    actor: str | None,
    now: float | None = None,
    confirm: float = 0,
) -> Handled:
    """Handle the matches of one report: find each secret, revoke it (or, `on_leak:
    notify`, leave it), record it; with `confirm` > 0 wait that long for every live server
    to drop the revoked ones (and for a replica to hold the deletions)."""
    matches = list(matches)
    now = time.time() if now is None else now
    warnings: list[str] = []
    try:
        policy = store.load_policy()
    except MalformedRecord as e:  # (revoke: the safe side when the policy cannot say)
        policy = None
        warnings.append(f"{e}: on_leak read as revoke")
    on_leak = policy.on_leak if policy is not None else "revoke"
    route_secrets = policy.secrets if policy is not None else {}
    index = TokenIndex(store)
    firsts: dict[str, Match] = {}
    for m in matches:
        firsts.setdefault(m.digest, m)
    found = index.owners(d for d in firsts if d not in route_secrets)
    revoked, deleted = 0, []
    for digest, match in firsts.items():
        if digest in route_secrets:
            secret_id = route_secrets[digest].id
            log.error(
                "route secret %s of the policy leaked (%s): change it in the policy file and "
                "sync; extauthz cannot revoke it",
                secret_id,
                match.url or match.source or "reported by hand",
            )
            warnings += _also(notify_leaked(store, secret_id, match, "route_secret", 0, actor, now))
            continue
        if digest not in found:
            continue
        count = 0
        if on_leak == "revoke":
            count = index.revoke_secret(digest, found[digest])
            revoked += count
            deleted.append(digest)
        token_id = found[digest]
        warnings += _also(notify_leaked(store, token_id, match, on_leak, count, actor, now))
    unconfirmed: list[str] = []
    if deleted and confirm > 0:
        unconfirmed = store.confirm(confirm, *deleted)
        warnings += _also(store.replicated(confirm))
    ours = frozenset(found) | (frozenset(firsts) & frozenset(route_secrets))
    return Handled(
        feedback(matches, ours), found, on_leak, revoked, tuple(unconfirmed), tuple(warnings)
    )


def notify_leaked(
    store: Store,
    token_id: str,
    match: Match,
    action: str,
    secrets: int,
    actor: str | None,
    now: float,
) -> str | None:
    """The one place a leaked secret of ours is told about: the audit event `token.leaked`
    (target the token id; detail: where GitHub found it, its type, and what was done:
    `revoke`, `notify` or `route_secret`), a log line, and the `token.leaked` webhook where
    this process sends them (docs/webhooks.md; one per token and place found). Returns a
    warning when the audit event was not written."""
    detail: dict[str, Any] = {
        "url": match.url,
        "source": match.source,
        "type": match.type,
        "on_leak": action,
        "secrets": secrets,
    }
    shown = audit.readable(token_id) or "(a token key without an id)"
    log.warning(
        "token %s leaked (%s): %s",
        shown,
        audit.readable(match.url or match.source or "reported by hand"),
        {"revoke": f"revoked ({secrets} secrets)", "notify": "kept working (on_leak: notify)"}.get(
            action, "a route secret: change it in the policy file"
        ),
    )
    where = hashlib.sha256(f"{match.type}\n{match.url}\n{match.source}".encode()).hexdigest()
    webhooks.emit(
        "token.leaked", f"token.leaked:{token_id}:{where[:16]}", {"token_id": token_id, **detail}
    )
    return audit.record(store, actor, "token.leaked", token_id, detail, now)


def _also(warning: str | None) -> list[str]:
    return [] if warning is None else [warning]


# --- GitHub's keys ---------------------------------------------------------------------------

_FileState = tuple[int, int, int, int] | None  # (device, inode, size, mtime in ns)


def _file_state(path: str) -> _FileState:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class KeysFile:
    """`--secret-scanning-keys FILE`: GitHub's published keys (`{"public_keys": [...]}`),
    read now (ConfigError when they cannot be used) and read again whenever the file
    changes (one stat per report), so that writing a fresh copy is all a refresh takes. A
    changed file that cannot be used is logged once; the keys read before stay."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._state = _file_state(path)
        self._keys = self._read()
        self._problem = ""

    def _read(self) -> SigningKeys:
        try:
            data = read_regular_file(self.path, MAX_KEYS_FILE_BYTES)
        except OSError as e:
            raise ConfigError(
                f"--secret-scanning-keys {self.path}: cannot read it ({describe(e)})"
            ) from None
        return parse_keys(data, f"--secret-scanning-keys {self.path}")

    def keys(self) -> SigningKeys:
        """The keys of the file as it is now (or as it last could be used)."""
        state = _file_state(self.path)
        if state == self._state:
            return self._keys
        with self._lock:
            if state != self._state:
                self._state = state
                try:
                    self._keys = self._read()
                except ConfigError as e:
                    if str(e) != self._problem:
                        log.error("%s: the %d keys read before stay", e, len(self._keys))
                    self._problem = str(e)
                else:
                    self._problem = ""
                    log.info("secret scanning: %d keys read from %s", len(self._keys), self.path)
            return self._keys
