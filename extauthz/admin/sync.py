"""The policy sync job: validate a policy file, then publish it to Redis as one new version.

The whole file is validated and every route secret read before anything is written; the
new snapshot replaces the old in a single Redis command (readers see one version or the
other, never a mix). A file identical to what is published changes nothing, so a sync is
safe to re-run at any time: `watch` re-runs it whenever the file (or a secret file it names)
changes and whenever the published policy does (Redis came back empty, someone published
another file), so the file stays the one source of the policy (docs/policy.md).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from extauthz.admin import audit
from extauthz.core.credentials import token_hash
from extauthz.core.policy import (
    PolicyDocument,
    PolicySnapshot,
    RoutePolicy,
    SecretSpec,
    load_policy_file,
)
from extauthz.core.token_record import TokenRecord
from extauthz.errors import PolicyError, StoreError
from extauthz.files import describe, read_regular_file
from extauthz.storage.store import PolicyVersion, Store

MAX_SECRET_BYTES = 64 << 10  # a route secret is a password, not a file's worth of data
WATCH_INTERVAL = 10.0  # seconds between two looks at the file and the published version
MAX_BACKOFF = 300.0  # seconds between looks while another writer keeps publishing
log = logging.getLogger("extauthz.sync")


@dataclass
class SyncResult:
    """What a sync changed (or would change, with dry_run); names only, never secrets."""

    version: int
    changed: bool
    digest: str = ""  # of the snapshot published (or found the same) by this sync
    added: list[str] = field(default_factory=list)
    changed_routes: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # in Redis, not in the file, no --prune
    secrets_added: list[str] = field(default_factory=list)
    secrets_changed: list[str] = field(default_factory=list)
    secrets_removed: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # e.g. the audit event not written
    on_leak: str | None = None  # the new on_leak, when it changes

    def lines(self) -> list[str]:
        out: list[str] = [f"~ on_leak {self.on_leak}"] if self.on_leak else []
        for label, names in (
            ("+ route", self.added),
            ("~ route", self.changed_routes),
            ("- route", self.removed),
            ("= route (not in file, kept; --prune removes it)", self.kept),
            ("+ secret", self.secrets_added),
            ("~ secret", self.secrets_changed),
            ("- secret", self.secrets_removed),
        ):
            out.extend(f"{label} {name}" for name in names)
        return out


def resolve_secrets(
    doc: PolicyDocument, env: Mapping[str, str] | None = None
) -> dict[str, TokenRecord]:
    """Read every route secret and hash it: {sha256 hex: record}. Raises PolicyError."""
    env = os.environ if env is None else env
    out: dict[str, TokenRecord] = {}
    for index, spec in enumerate(doc.secrets):
        value = _read_secret(doc.file, index, spec, env)
        digest = token_hash(value)
        if digest in out:
            raise PolicyError(
                doc.file, spec.line, f"secrets[{index}]", "same secret value as another secret"
            )
        out[digest] = TokenRecord(id=spec.id, routes=spec.routes, scopes=spec.scopes)
    return out


def _read_secret(file: str, index: int, spec: SecretSpec, env: Mapping[str, str]) -> str:
    if spec.from_env is not None:
        key = f"secrets[{index}].from_env"
        value = env.get(spec.from_env)
        if value is None:
            raise PolicyError(
                file, spec.line, key, f"environment variable {spec.from_env} is not set"
            )
    else:
        key = f"secrets[{index}].from_file"
        try:
            raw = read_regular_file(str(spec.from_file), MAX_SECRET_BYTES)
            value = raw.decode("utf-8").rstrip("\r\n")
        except OSError as e:
            raise PolicyError(file, spec.line, key, f"cannot read: {describe(e)}") from e
        except UnicodeDecodeError as e:
            raise PolicyError(file, spec.line, key, f"{spec.from_file} is not UTF-8") from e
    if len(value) < 8:
        raise PolicyError(file, spec.line, key, "the secret is empty or shorter than 8 characters")
    return value


def sync(
    store: Store,
    doc: PolicyDocument,
    *,
    prune: bool = False,
    dry_run: bool = False,
    env: Mapping[str, str] | None = None,
    actor: str | None = None,
    replace_malformed: bool = False,
) -> SyncResult:
    """Publish `doc` as the next policy version (unless nothing changed or dry_run); with
    `replace_malformed`, over a published snapshot that cannot be read."""
    secrets = resolve_secrets(doc, env)
    results: list[SyncResult] = []

    def plan(current: PolicySnapshot | None) -> PolicySnapshot | None:
        result, snapshot = _plan(current, doc, secrets, prune)
        results.append(result)
        return snapshot if result.changed and not dry_run else None

    store.update_policy(plan, replace_malformed)
    result = results[-1]
    if result.changed and not dry_run:
        routes = {
            "added": result.added,
            "changed": result.changed_routes,
            "removed": result.removed,
        }
        secrets_detail = {
            "added": result.secrets_added,
            "changed": result.secrets_changed,
            "removed": result.secrets_removed,
        }
        detail = {"file": doc.file, "routes": routes, "secrets": secrets_detail}
        if result.on_leak:
            detail["on_leak"] = result.on_leak
        warning = audit.record(store, actor, "policy.sync", f"version {result.version}", detail)
        if warning is not None:
            result.warnings.append(warning)
    return result


def _plan(
    current: PolicySnapshot | None,
    doc: PolicyDocument,
    secrets: dict[str, TokenRecord],
    prune: bool,
) -> tuple[SyncResult, PolicySnapshot]:
    old_routes: Mapping[str, RoutePolicy] = current.routes if current else {}
    old_secrets: Mapping[str, TokenRecord] = current.secrets if current else {}
    routes = dict(doc.routes)
    kept = sorted(set(old_routes) - set(routes))
    if not prune:
        routes.update({name: old_routes[name] for name in kept})
        file_ids = {r.id for r in secrets.values()}
        secrets = dict(secrets)
        secrets.update({h: r for h, r in old_secrets.items() if r.id not in file_ids})
    version = (current.version if current else 0) + 1
    snapshot = PolicySnapshot(
        version, routes, doc.internal_networks, secrets, prices=doc.prices, on_leak=doc.on_leak
    )

    old_by_id = {r.id: (h, r) for h, r in old_secrets.items()}
    new_by_id = {r.id: (h, r) for h, r in secrets.items()}
    result = SyncResult(
        version=version,
        changed=current is None or snapshot.digest() != current.digest(),
        added=sorted(set(doc.routes) - set(old_routes)),
        changed_routes=sorted(
            n for n in doc.routes if n in old_routes and old_routes[n] != doc.routes[n]
        ),
        removed=kept if prune else [],
        kept=[] if prune else kept,
        secrets_added=sorted(set(new_by_id) - set(old_by_id)),
        secrets_changed=sorted(
            i for i in new_by_id if i in old_by_id and new_by_id[i] != old_by_id[i]
        ),
        secrets_removed=sorted(set(old_by_id) - set(new_by_id)),
        on_leak=doc.on_leak if doc.on_leak != (current.on_leak if current else "revoke") else None,
    )
    result.digest = snapshot.digest()
    if not result.changed:
        result.version = current.version if current else 0
    return result, snapshot


# --- watching: the file stays the one source of the policy -----------------------------------

_FileState = tuple[int, int, int, int] | None  # (device, inode, size, mtime in ns), None: absent


def _file_state(path: str) -> _FileState:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class _Seen:
    """What the last sync was made from: the files' states and the version it left."""

    files: tuple[_FileState, ...]
    published: PolicyVersion | None


def watch(
    store: Store,
    path: str,
    stop: threading.Event,
    *,
    prune: bool = False,
    interval: float = WATCH_INTERVAL,
    env: Mapping[str, str] | None = None,
) -> None:
    """Sync `path` now, then every `interval` seconds where the file, a secret file it names
    or the published version changed, until `stop` is set. A file that fails validation and
    a Redis that cannot be reached are logged (once per distinct message) and retried; what
    was published stays. A published snapshot that cannot be read is replaced. Another
    writer that keeps publishing something else (a second watcher of another file) is
    logged once, and the watcher backs off (up to MAX_BACKOFF) while it goes on. A look that
    finds nothing changed costs one stat per file and one HMGET."""
    paths = [path]
    seen: _Seen | None = None
    problem = ""
    fights = 0  # publishes by another writer in a row
    while True:
        wait = interval
        try:
            files = tuple(_file_state(p) for p in paths)  # (before reading: an edit after
            published = store.policy_version()  # this is seen at the next look)
            if seen is None or seen.files != files or seen.published != published:
                foreign = seen is not None and seen.files == files and published is not None
                fights = fights + 1 if foreign else 0
                if fights == 2:
                    log.error(
                        "another writer keeps publishing a policy other than %s (version %s): "
                        "is a second watcher running with another file? backing off",
                        path,
                        published.version if published else "none",
                    )
                doc = load_policy_file(path)
                paths = [path, *(s.from_file for s in doc.secrets if s.from_file is not None)]
                if len(paths) > len(files):  # (secret files now named: their state, as read)
                    files = tuple(_file_state(p) for p in paths)
                result = sync(store, doc, prune=prune, env=env, replace_malformed=True)
                if result.changed:
                    log.info(
                        "published policy version %d from %s (%s)",
                        result.version,
                        path,
                        "; ".join(result.lines()) or "a new Redis",
                    )
                for warning in (*doc.warnings, *result.warnings):
                    log.warning("%s", warning)
                seen = _Seen(files, PolicyVersion(result.version, result.digest))
            else:
                fights = 0
            if problem:
                log.info("policy %s in sync again", path)
            problem = ""
        except (PolicyError, StoreError) as e:
            if str(e) != problem:
                log.error("cannot sync %s (%s): the published policy stays", path, e)
            problem = str(e)
            seen = None  # (looked at again next time: the file may be fixed, Redis back)
        if fights >= 2:
            wait = min(MAX_BACKOFF, interval * 2 ** min(fights - 1, 16))
        if stop.wait(wait):
            return
