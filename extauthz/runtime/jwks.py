"""OIDC key sets: fetched from `jwks_uri`, discovery or a file, refreshed in the background.

The hot path never waits on the network, except for one bounded wait (`KEY_WAIT`, well
inside Envoy's ext_authz timeout) when a token names a key we have not seen: then one
refetch is asked for (at most once per `min_refetch` seconds per key source) and the token
is checked again. Keys are kept while the IdP is unreachable; a route whose keys were never
fetched answers 503 (error), not 401. A server starts serving once the key sets of the
policy's routes have been fetched once (`first_fetches`, bounded by the fetch timeout), so
its first requests are not refused for keys still on their way.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from extauthz.core.jwks_keys import KeySet, parse_jwks
from extauthz.core.policy import JwtSettings
from extauthz.errors import JwksError
from extauthz.files import describe, read_regular_file

log = logging.getLogger("extauthz.jwks")

KEY_WAIT = 0.1  # seconds a request may wait for a JWKS refetch (Envoy's timeout is 0.25 s)
MAX_DOCUMENT_BYTES = 1 << 20


# --- fetching and caching key sets -----------------------------------------------------------


def source_of(settings: JwtSettings) -> tuple[str, str]:
    """Where a route's keys come from: ("file", path), ("uri", url) or ("discovery", issuer)."""
    if settings.jwks_file:
        return ("file", settings.jwks_file)
    if settings.jwks_uri:
        return ("uri", settings.jwks_uri)
    return ("discovery", settings.issuer)


def http_get(url: str, timeout: float) -> bytes:
    if not url.startswith(("https://", "http://")):
        raise JwksError(f"not an http(s) URL: {url}")
    request = urllib.request.Request(url, headers={"accept": "application/json"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310
            body: bytes = resp.read(MAX_DOCUMENT_BYTES + 1)
    except OSError as e:
        raise JwksError(f"GET {url}: {e}") from e
    if len(body) > MAX_DOCUMENT_BYTES:
        raise JwksError(f"GET {url}: document over {MAX_DOCUMENT_BYTES} bytes")
    return body


def load_keys(source: tuple[str, str], fetch: Callable[[str], bytes]) -> KeySet:
    kind, location = source
    if kind == "file":
        try:
            return parse_jwks(read_regular_file(location, MAX_DOCUMENT_BYTES))
        except OSError as e:
            raise JwksError(f"cannot read {location}: {describe(e)}") from e
    if kind == "uri":
        return parse_jwks(fetch(location))
    discovery_url = location.rstrip("/") + "/.well-known/openid-configuration"
    try:
        doc = json.loads(fetch(discovery_url))
    except ValueError as e:
        raise JwksError(f"{discovery_url} is not JSON") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("jwks_uri"), str):
        raise JwksError(f"{discovery_url} has no jwks_uri")
    if doc.get("issuer") != location:
        raise JwksError(f"{discovery_url} names issuer {doc.get('issuer')!r}, not {location!r}")
    return parse_jwks(fetch(doc["jwks_uri"]))


@dataclass
class _Source:
    keys: KeySet | None = None
    fetched_at: float = -math.inf  # monotonic time of the last success
    attempted_at: float = -math.inf  # of the last attempt
    attempts: int = 0
    wanted: bool = True  # a fetch is asked for, or running
    asked_at: float = field(default_factory=time.monotonic)  # when `wanted` was last set
    error: str | None = None


@dataclass
class JwksCache:
    """Key sets by source, refreshed by one background thread."""

    refresh: float = 300.0  # seconds between refreshes of a key set
    min_refetch: float = 10.0  # at most one extra fetch per source this often (unknown kid)
    fetch_timeout: float = 3.0
    fetch: Callable[[str], bytes] | None = None
    _sources: dict[tuple[str, str], _Source] = field(default_factory=dict)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _stopping: bool = False
    _thread: threading.Thread | None = None
    fetches_ok: int = 0
    fetches_failed: int = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="jwks-refresh", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def track(self, settings: Iterable[JwtSettings]) -> None:
        """Make sure every source is known; new ones are fetched in the background."""
        with self._cond:
            for s in settings:
                self._sources.setdefault(source_of(s), _Source())
            self._cond.notify_all()

    def first_fetches(self, timeout: float) -> list[str]:
        """Wait, at most `timeout` seconds, until every source known has been fetched from
        once (or failed to be); the locations still waiting for their first."""
        with self._cond:
            self._cond.wait_for(
                lambda: all(s.attempts for s in self._sources.values()) or self._stopping,
                timeout,
            )
            return [key[1] for key, s in self._sources.items() if not s.attempts]

    def keys(self, settings: JwtSettings) -> KeySet | None:
        source = self._sources.get(source_of(settings))
        return None if source is None else source.keys

    def refetch(self, settings: JwtSettings, wait: float) -> bool:
        """Ask for a fetch (rate-limited) and wait for it; True if one ran meanwhile.

        Nobody waits past `wait` seconds after the fetch was asked for: while a slow fetch
        runs, later requests do not queue behind it, and when the rate limit allows no
        fetch, a request does not wait at all (a flood of unknown `kid`s costs nothing).
        """
        key = source_of(settings)
        with self._cond:
            now = time.monotonic()
            source = self._sources.setdefault(key, _Source())
            if not source.wanted:
                if now - source.attempted_at < self.min_refetch:
                    return False
                source.wanted, source.asked_at = True, now
                self._cond.notify_all()
            remaining = source.asked_at + wait - now
            if remaining <= 0:
                return False
            before = source.attempts
            return self._cond.wait_for(lambda: source.attempts > before, timeout=remaining)

    def _due(self, now: float) -> list[tuple[tuple[str, str], _Source]]:
        due = []
        for key, s in self._sources.items():
            stale = s.keys is not None and now - s.fetched_at >= self.refresh
            retry = s.keys is None and now - s.attempted_at >= min(self.min_refetch, self.refresh)
            if s.wanted or stale or retry:
                due.append((key, s))
        return due

    def _run(self) -> None:
        fetch = self.fetch or (lambda url: http_get(url, self.fetch_timeout))
        while True:
            with self._cond:
                if self._stopping:
                    return
                due = self._due(time.monotonic())
                if not due:
                    self._cond.wait(timeout=1.0)
                    continue
                for _, s in due:
                    s.attempted_at = time.monotonic()
            for key, s in due:
                try:
                    keys, error = load_keys(key, fetch), None
                except JwksError as e:
                    keys, error = None, str(e)
                with self._cond:
                    if keys is not None:
                        self.fetches_ok += 1
                        s.keys, s.fetched_at = keys, time.monotonic()
                        if s.error is not None:
                            log.info("JWKS %s fetched again", key[1])
                    else:
                        self.fetches_failed += 1
                    if keys is None and s.error != error:
                        kept = "keeping the cached keys" if s.keys else "no keys yet: 503"
                        log.warning("JWKS %s: %s (%s)", key[1], error, kept)
                    s.error = error
                    s.wanted = False
                    s.attempts += 1
                    self._cond.notify_all()
