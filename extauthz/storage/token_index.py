"""The token id index: show, update, rotate, revoke and list tokens by id, at any count.

    {prefix}token-id:<id>   HASH    sha256 (the current secret's hash) and, during a rotation
                                    grace, previous (the old secret's hash); it expires with
                                    the token
    {prefix}token-ids       ZSET    member: id, score: creation sequence (`token list` order)
    {prefix}token-seq       STRING  the last sequence number handed out

Only the CLI writes these (each change in one MULTI under WATCH of the id's key); the
decision path never reads them. Tokens made by hand (redis-cli HSET of a token key) are not
here until `extauthz token reindex`. An entry whose token is gone (expired, deleted by hand)
is never shown: it is removed when met, and by reindex. With a Cluster every key carries
the prefix's hash tag, so all of them live in one slot and transactions span them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import redis

from extauthz.core.token_record import (
    MANAGEMENT,
    MANAGEMENT_SCOPES,
    TokenRecord,
    split_list,
    usable_id,
)
from extauthz.errors import MalformedRecord, StoreRefused, TokenExists, UnknownToken
from extauthz.storage.store import Store, unix_seconds

PAGE = 500  # ids per round trip when listing, reindexing or importing
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class IndexedToken:
    """A token found by id: its current hash and record, and a secret in rotation grace."""

    digest: str
    record: TokenRecord
    previous: str | None = None  # the old secret's hash, while its grace lasts
    previous_expires_at: int | None = None


@dataclass
class Reindexed:
    """What `reindex` did: counts, and the token keys it could not index (names only)."""

    scanned: int = 0
    added: int = 0
    removed: int = 0  # entries whose token was gone
    conflicts: list[str] = field(default_factory=list)  # "hash (id X)": X is taken
    no_id: list[str] = field(default_factory=list)  # hashes of keys without a usable id
    # records with a management scope made before kinds existed, now `kind: management`
    marked_management: int = 0
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ImportItem:
    """One token to write by `write_many`, as the import planned it."""

    digest: str
    record: TokenRecord
    action: str  # "create", "update" (same secret, new record), "replace" (new secret)
    old_digest: str | None = None


class TokenIndex:
    """Token records reached by id (see the module docstring for the keys)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.client: Any = store.client
        self.ids_key = f"{store.prefix}token-ids"
        self.seq_key = f"{store.prefix}token-seq"
        self._id_prefix = f"{store.prefix}token-id:"
        self.forgotten = 0  # entries dropped because their token was gone

    def id_key(self, token_id: str) -> str:
        return self._id_prefix + token_id

    # --- one token ------------------------------------------------------------------------

    def get(self, token_id: str) -> IndexedToken:
        """The token with this id; UnknownToken when the index has none (or it is gone)."""
        with self.store.redis_errors():
            found = self._read(self.client, token_id)
        if found is None:
            self._forget_if_gone(token_id)
            raise UnknownToken(token_id)
        (last,) = self.store.last_used([token_id])
        return replace(found, record=replace(found.record, last_used=last))

    def add(self, digest: str, record: TokenRecord) -> None:
        """A new token; TokenExists when another live secret has its id."""

        def write(pipe: Any) -> None:
            current = pipe.hget(self.id_key(record.id), "sha256")
            if current and current != digest and pipe.exists(self.store.token_key(current)):
                raise TokenExists(record.id)
            self._check_types(pipe, record)
            seq = int(pipe.incr(self.seq_key))  # (at once: the pipeline is watching)
            pipe.multi()
            self._write_token(pipe, digest, record)
            self._write_entry(pipe, record, digest, None, seq)

        self._transaction(record.id, write)
        self.store.publish(digest)

    def update(
        self, token_id: str, change: Callable[[TokenRecord], TokenRecord], confirm: float = 0
    ) -> tuple[TokenRecord, list[str]]:
        """Rewrite the record (not the secret) with `change(record)`; a secret in rotation
        grace gets it too, keeping its earlier end. Returns the new record and the servers
        that did not confirm (see Store.confirm)."""

        def write(pipe: Any) -> tuple[IndexedToken, TokenRecord]:
            found = self._read(pipe, token_id)
            if found is None:
                raise UnknownToken(token_id)
            new = change(found.record)
            pipe.multi()
            self._write_token(pipe, found.digest, new)
            if found.previous is not None:
                ends = [t for t in (found.previous_expires_at, new.expires_at) if t is not None]
                end = min(ends) if ends else None
                self._write_token(pipe, found.previous, replace(new, expires_at=end))
            self._write_entry(pipe, new, found.digest, found.previous, None)
            return found, new

        found, new = self._transaction(token_id, write)
        changed = [found.digest] + ([found.previous] if found.previous else [])
        return new, self.store.confirm(confirm, *changed)

    def rotate(
        self,
        token_id: str,
        new_digest: str,
        grace_until: int | None,
        confirm: float = 0,
        check: Callable[[TokenRecord | None], None] | None = None,
    ) -> tuple[TokenRecord, list[str]]:
        """A new secret for the id. The old one stops at once, or at `grace_until` (unix
        seconds); a secret still in an earlier grace stops at once. `check(record)` may
        refuse it, on the record as it is inside the transaction."""

        def write(pipe: Any) -> IndexedToken:
            found = self._read(pipe, token_id)
            if found is None:
                raise UnknownToken(token_id)
            if check is not None:
                check(found.record)
            pipe.multi()
            self._write_token(pipe, new_digest, found.record)
            old_key = self.store.token_key(found.digest)
            if grace_until is None:
                pipe.delete(old_key)
            else:
                pipe.hset(old_key, "expires_at", str(grace_until))
                pipe.expireat(old_key, grace_until)
            if found.previous is not None:
                pipe.delete(self.store.token_key(found.previous))
            previous = found.digest if grace_until is not None else None
            self._write_entry(pipe, found.record, new_digest, previous, None)
            return found

        found = self._transaction(token_id, write)
        changed = [found.digest] + ([found.previous] if found.previous else [])
        return found.record, self.store.confirm(confirm, new_digest, *changed)

    def revoke(
        self,
        token_id: str,
        confirm: float = 0,
        check: Callable[[TokenRecord | None], None] | None = None,
    ) -> tuple[int, list[str]]:
        """Delete the token, any secret of it in rotation grace, and its index entry.
        Returns (secrets deleted, servers that did not confirm). `check(record)` may refuse
        it, on the record as it is inside the transaction (None: one that cannot be read)."""

        def write(pipe: Any) -> list[str]:
            if check is not None:
                try:
                    current = self._read(pipe, token_id)
                except MalformedRecord:
                    current = None
                check(current.record if current is not None else None)
            # The record is not parsed: one edited by hand into any shape can still be
            # revoked by the id its entry names (its key's own `id` field must agree).
            try:
                entry = pipe.hmget(self.id_key(token_id), ["sha256", "previous"])
            except redis.ResponseError:  # the entry itself is not a hash (edited by hand)
                entry = [None, None]
            digests = [d for d in entry if d and self._names(pipe, d, token_id)]
            if not digests and not pipe.exists(self.id_key(token_id)):
                raise UnknownToken(token_id)
            pipe.multi()
            if digests:
                pipe.delete(*(self.store.token_key(d) for d in digests))
            pipe.delete(self.id_key(token_id))
            pipe.zrem(self.ids_key, token_id)
            return digests

        digests = self._transaction(token_id, write)
        return len(digests), self.store.confirm(confirm, *digests)

    # --- leaked secrets (admin/leaks.py) ----------------------------------------------------

    def owners(self, digests: Iterable[str]) -> dict[str, str]:
        """The hashes among `digests` that have a token key, each with the id its record
        names ("" when none can be read: a key edited by hand is still a secret of ours);
        one round trip for them all."""
        wanted = list(dict.fromkeys(digests))
        with self.store.redis_errors():
            pipe = self.client.pipeline(transaction=False)
            for digest in wanted:
                pipe.exists(self.store.token_key(digest))
                pipe.hget(self.store.token_key(digest), "id")
            replies = pipe.execute(raise_on_error=False) if wanted else []
            found = {}
            for i, digest in enumerate(wanted):
                exists, token_id = replies[2 * i], replies[2 * i + 1]
                if isinstance(exists, Exception):
                    raise exists  # (EXISTS knows no wrong type: an error of Redis itself)
                if exists:  # (an HGET of a key that is not a hash: its error, no id)
                    found[digest] = token_id.strip(" ") if isinstance(token_id, str) else ""
        return found

    def revoke_secret(self, digest: str, token_id: str) -> int:
        """Revoke what a leaked secret opens: the token `token_id` (its record's id) with
        every secret of it and its entry, and the leaked key itself whatever the index says
        (made by hand, or a record that cannot be read). Returns the secrets deleted; the
        invalidations are published (Store.confirm waits for them)."""
        count = 0
        if token_id and usable_id(token_id):
            with contextlib.suppress(UnknownToken):
                count, _ = self.revoke(token_id)
        with self.store.redis_errors():
            deleted = int(self.client.delete(self.store.token_key(digest)))
        if deleted:
            self.store.publish(digest)
        return count + deleted

    # --- many tokens ----------------------------------------------------------------------

    def stream(self) -> Iterator[tuple[str, str, TokenRecord | MalformedRecord]]:
        """Every indexed token as (id, hash, record or its error), in creation order, a page
        at a time (memory does not grow with the number of tokens)."""
        after = "-inf"
        while True:
            with self.store.redis_errors():
                page = self.client.zrangebyscore(
                    self.ids_key, after, "+inf", start=0, num=PAGE, withscores=True
                )
            if not page:
                return
            after = f"({page[-1][1]!r}"
            yield from self._records([token_id for token_id, _ in page])
            if len(page) < PAGE:
                return

    def page(
        self,
        after: float | None,
        count: int,
        route: str | None = None,
        among: list[str] | None = None,
    ) -> tuple[list[TokenRecord | MalformedRecord], float | None]:
        """One page for an API: up to `count` entries after creation position `after`
        (`route`: only tokens that grant it, so a page may hold fewer; `among`: only these
        ids, e.g. a team's), and the position the next page starts after (None: the last)."""
        with self.store.redis_errors():
            if among is not None:
                scores = self.client.zmscore(self.ids_key, among) if among else []
                entries = sorted(
                    ((i, s) for i, s in zip(among, scores, strict=True) if s is not None),
                    key=lambda entry: entry[1],
                )
                entries = [e for e in entries if after is None or e[1] > after][: count + 1]
            else:
                entries = self.client.zrangebyscore(
                    self.ids_key,
                    "-inf" if after is None else f"({after!r}",
                    "+inf",
                    start=0,
                    num=count + 1,  # one more: is there a next page at all?
                    withscores=True,
                )
        more = len(entries) > count
        entries = entries[:count]
        records = [
            record
            for _, _, record in self._records([token_id for token_id, _ in entries])
            if not (isinstance(record, TokenRecord) and route and not record.grants_route(route))
        ]
        return records, (entries[-1][1] if more else None)

    def _records(self, ids: list[str]) -> Iterator[tuple[str, str, TokenRecord | MalformedRecord]]:
        if not ids:  # (ZMSCORE with no member is an error)
            return
        with self.store.redis_errors():
            pipe = self.client.pipeline(transaction=False)
            for token_id in ids:
                pipe.hget(self.id_key(token_id), "sha256")
            entries = pipe.execute(raise_on_error=False)
            digests = [d if isinstance(d, str) else None for d in entries]
            for digest in digests:
                pipe.hgetall(self.store.token_key(digest or ""))
            pipe.zmscore(self.store.last_used_key, ids)
            *records, used = pipe.execute(raise_on_error=False)
        if isinstance(used, Exception):  # (never fails a listing)
            used = [None] * len(ids)
        gone: list[str] = []
        for token_id, entry, digest, fields, last in zip(
            ids, entries, digests, records, used, strict=True
        ):
            if isinstance(entry, Exception):  # the entry was edited by hand into another type
                yield (
                    token_id,
                    "",
                    MalformedRecord(
                        f"index entry {self.id_key(token_id)} is not a hash: "
                        f"`extauthz token revoke {token_id}` removes it"
                    ),
                )
                continue
            if not digest:  # no entry (any more)
                gone.append(token_id)
                continue
            if isinstance(fields, Exception):
                yield token_id, digest, MalformedRecord(f"token key {digest[:12]}…: {fields}")
                continue
            try:
                record = TokenRecord.from_fields(fields) if fields else None
            except MalformedRecord as e:
                yield token_id, digest, e
                continue
            if record is None or record.id != token_id:
                gone.append(token_id)
            else:
                yield (
                    token_id,
                    digest,
                    replace(record, last_used=unix_seconds(last)),
                )
        for token_id in gone:
            self._forget_if_gone(token_id)

    def known(self, ids: Iterable[str]) -> dict[str, str]:
        """{id: current hash} for those of `ids` the index has, whose token still exists."""
        ids = list(ids)
        with self.store.redis_errors():
            pipe = self.client.pipeline(transaction=False)
            digests = self._current(pipe, ids)
            for digest in digests:
                pipe.exists(self.store.token_key(digest or ""))
            alive = pipe.execute()
        return {i: d for i, d, up in zip(ids, digests, alive, strict=True) if d and up}

    def records(self, digests: Iterable[str]) -> dict[str, dict[str, str]]:
        """{hash: raw fields} of the token keys that exist."""
        digests = list(digests)
        with self.store.redis_errors():
            pipe = self.client.pipeline(transaction=False)
            for digest in digests:
                pipe.hgetall(self.store.token_key(digest))
            found = pipe.execute()
        return {d: f for d, f in zip(digests, found, strict=True) if f}

    def write_many(
        self,
        items: list[ImportItem],
        audit: Callable[[list[ImportItem]], list[dict[str, str]]] | None = None,
        max_audit: int = 100_000,
    ) -> None:
        """Write planned tokens in batches, each one MULTI/EXEC together with its audit
        events (`audit(batch)`): an interrupted import has audited exactly what it wrote,
        and running it again finishes it (skipping, and not auditing, what is there).

        A token updated in place keeps a secret of it in rotation grace, which gets the new
        record too (as `update` does); a replaced token's secret in grace is deleted."""
        new = sum(1 for item in items if item.action == "create")
        audit_key = f"{self.store.prefix}audit"
        with self.store.redis_errors():
            self._check_types(self.client, None, audit_key if audit is not None else None)
            seq = int(self.client.incrby(self.seq_key, new)) - new if new else 0
            for start in range(0, len(items), PAGE):
                batch = items[start : start + PAGE]
                known = [i for i in batch if i.action != "create"]
                graces = self._graces(known)
                pipe = self.client.pipeline(transaction=True)
                for item in batch:
                    if item.action == "create":
                        seq += 1
                    self._write_token(pipe, item.digest, item.record)
                    grace = graces.get(item.record.id)
                    previous = None
                    if item.old_digest is not None:
                        pipe.delete(self.store.token_key(item.old_digest))
                        # (a secret in grace goes, unless it is the one being written: an
                        # export from before a rotation, replaced back)
                        if grace is not None and grace[0] != item.digest:
                            pipe.delete(self.store.token_key(grace[0]))
                    elif grace is not None:  # an update: the old secret gets it too
                        previous = grace[0]
                        ends = [t for t in (grace[1], item.record.expires_at) if t is not None]
                        kept = replace(item.record, expires_at=min(ends) if ends else None)
                        self._write_token(pipe, previous, kept)
                    order = seq if item.action == "create" else None
                    self._write_entry(pipe, item.record, item.digest, previous, order)
                    for digest in (item.digest, item.old_digest, previous):
                        if digest is not None:
                            pipe.publish(self.store.invalidate_channel, digest)
                for event in audit(batch) if audit is not None else ():
                    pipe.xadd(audit_key, event, maxlen=max_audit, approximate=True)
                pipe.execute()

    def _graces(self, items: list[ImportItem]) -> dict[str, tuple[str, int | None]]:
        """{id: (hash, expires_at)} of the secrets in rotation grace of these tokens."""
        if not items:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for item in items:
            pipe.hget(self.id_key(item.record.id), "previous")
        previous = [p if isinstance(p, str) else None for p in pipe.execute(raise_on_error=False)]
        for digest in previous:
            pipe.hget(self.store.token_key(digest or ""), "expires_at")
        ends = pipe.execute(raise_on_error=False)
        return {
            item.record.id: (digest, int(end) if end.isdigit() else None)
            for item, digest, end in zip(items, previous, ends, strict=True)
            if digest and isinstance(end, str)  # (no expires_at: its grace is over)
        }

    def reindex(self) -> Reindexed:
        """Index every token key that is not (made by hand), and drop entries whose token
        is gone. Idempotent, a page at a time, safe while servers run (they never read the
        index)."""
        result = Reindexed()
        prefix = self.store.token_key("")
        with self.store.redis_errors():
            batch: list[str] = []
            for key in self.client.scan_iter(match=prefix + "*", count=1000):
                batch.append(key[len(prefix) :])
                if len(batch) == PAGE:
                    self._index_batch(batch, result)
                    batch = []
            if batch:
                self._index_batch(batch, result)
        before = self.forgotten
        for _ in self.stream():  # drops entries whose token is gone
            pass
        result.removed = self.forgotten - before
        return result

    def _index_batch(self, digests: list[str], result: Reindexed) -> None:
        result.scanned += len(digests)
        pipe = self.client.pipeline(transaction=False)
        for digest in digests:
            pipe.hmget(self.store.token_key(digest), ["id", "scopes", "kind"])
            pipe.pttl(self.store.token_key(digest))
        replies = pipe.execute(raise_on_error=False)
        found: dict[str, tuple[str, int]] = {}
        for d, fields, pttl in zip(digests, replies[::2], replies[1::2], strict=True):
            if not isinstance(pttl, int) or pttl == -2:
                continue  # gone since the scan
            token_id = fields[0] if isinstance(fields, list) else None
            if isinstance(token_id, str) and usable_id(token_id):
                found[d] = (token_id.strip(" "), pttl)
            else:
                result.no_id.append(d)  # no usable id, or not a hash: fix or delete by hand
        self._mark_management(pipe, digests, replies[::2], result)
        for token_id, _ in found.values():
            pipe.hmget(self.id_key(token_id), ["sha256", "previous"])
        entries: dict[str, Any] = {}
        for digest, entry in zip(found, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(entry, Exception):  # an entry edited by hand into another type
                token_id = found[digest][0]
                result.conflicts.append(f"{digest} (id {token_id}: its index entry is not a hash)")
            else:
                entries[digest] = entry
        for current, _ in entries.values():
            pipe.exists(self.store.token_key(current or ""))
        alive = dict(zip(entries, pipe.execute(), strict=True))
        todo: list[tuple[str, str, int]] = []
        claimed: set[str] = set()
        indexed: list[str] = []  # ids whose entry names this secret (listed, unless lost)
        for digest, (token_id, pttl) in found.items():
            if digest not in entries:
                continue
            current, previous = entries[digest]
            if digest == current:
                indexed.append(token_id)
            if digest in (current, previous):
                continue
            if (current and alive[digest]) or token_id in claimed:
                result.conflicts.append(f"{digest} (id {token_id})")
                continue
            claimed.add(token_id)
            todo.append((digest, token_id, pttl))
        self._relist(pipe, indexed, result)
        if not todo:
            return
        seq = int(self.client.incrby(self.seq_key, len(todo))) - len(todo)
        for digest, token_id, pttl in todo:
            seq += 1
            key = self.id_key(token_id)
            pipe.delete(key)
            pipe.hset(key, "sha256", digest)
            if pttl >= 0:
                pipe.pexpire(key, max(pttl, 1))
            pipe.zadd(self.ids_key, {token_id: seq})
        pipe.execute()
        result.added += len(todo)

    def _check_types(self, conn: Any, record: TokenRecord | None, audit: str | None = None) -> None:
        """MalformedRecord, before anything is written, when a key a write adds to is not of
        its type (edited by hand): inside MULTI/EXEC Redis would run every other command and
        fail that one alone, leaving tokens written and their order or audit not."""
        expected = {self.ids_key: "zset"}
        if audit is not None:
            expected[audit] = "stream"
        if record is not None and record.team is not None:
            expected[self.store.team_tokens_key(record.team)] = "set"
        for key, kind in expected.items():
            found = conn.type(key)
            if found not in (kind, "none"):
                raise MalformedRecord(
                    f"{key} is a {found}, not a {kind} (edited by hand): nothing was written; "
                    "fix or delete it by hand (docs/redis.md)"
                )

    def _relist(self, pipe: Any, token_ids: list[str], result: Reindexed) -> None:
        """Put indexed ids missing from the creation order (`token-ids` lost or edited by
        hand) back at its end, so that `token list` finds them again."""
        for token_id in token_ids:
            pipe.zscore(self.ids_key, token_id)
        scores = pipe.execute(raise_on_error=False) if token_ids else []
        missing = [t for t, score in zip(token_ids, scores, strict=True) if score is None]
        if not missing:
            return
        seq = int(self.client.incrby(self.seq_key, len(missing))) - len(missing)
        for offset, token_id in enumerate(missing, 1):
            pipe.zadd(self.ids_key, {token_id: seq + offset})
        pipe.execute()
        result.added += len(missing)

    # --- helpers --------------------------------------------------------------------------

    def _current(self, pipe: Any, ids: list[str]) -> list[str | None]:
        """The current hash the index holds for each id (one round trip on `pipe`); an
        entry that is not a hash (edited by hand) holds none."""
        for token_id in ids:
            pipe.hget(self.id_key(token_id), "sha256")
        return [d if isinstance(d, str) else None for d in pipe.execute(raise_on_error=False)]

    def _read(self, conn: Any, token_id: str) -> IndexedToken | None:
        """The entry and its records, read on `conn` (a client, or a pipeline that WATCHes
        the entry: its reads run at once). None when there is none or its token is gone."""
        digest, previous = conn.hmget(self.id_key(token_id), ["sha256", "previous"])
        if not digest:
            return None
        fields = conn.hgetall(self.store.token_key(digest))
        if not fields:
            return None
        record = TokenRecord.from_fields(fields)
        if record.id != token_id:
            return None
        previous_expires: int | None = None
        if previous:
            raw = conn.hget(self.store.token_key(previous), "expires_at")
            if raw is None:  # its grace is over
                previous = None
            elif raw.isdigit():
                previous_expires = int(raw)
        return IndexedToken(digest, record, previous or None, previous_expires)

    def _mark_management(
        self, pipe: Any, digests: list[str], fields: list[Any], result: Reindexed
    ) -> None:
        """Records made before kinds that hold a management scope become `kind: management`
        (`fields`: each digest's [id, scopes, kind], or the error reading it)."""
        marked = [
            d
            for d, f in zip(digests, fields, strict=True)
            if isinstance(f, list)
            and not f[2]
            and isinstance(f[1], str)
            and split_list(f[1]) & MANAGEMENT_SCOPES
        ]
        for d in marked:
            pipe.hset(self.store.token_key(d), "kind", MANAGEMENT)
        if marked:
            pipe.execute()
        result.marked_management += len(marked)

    def _names(self, conn: Any, digest: str, token_id: str) -> bool:
        """Whether the token key of `digest` exists with the id `token_id` (read raw)."""
        try:
            found = conn.hget(self.store.token_key(digest), "id")
        except redis.ResponseError:  # not a hash: nobody's record
            return False
        return isinstance(found, str) and found.strip(" ") == token_id

    def _write_token(self, pipe: Any, digest: str, record: TokenRecord) -> None:
        key = self.store.token_key(digest)
        pipe.delete(key)
        pipe.hset(key, mapping=record.to_fields())
        if record.expires_at is not None:
            pipe.expireat(key, record.expires_at)

    def _write_entry(
        self,
        pipe: Any,
        record: TokenRecord,
        digest: str,
        previous: str | None,
        seq: int | None,
    ) -> None:
        """The id's entry: its hashes, the token's expiry, and (new ids) its place in order."""
        key = self.id_key(record.id)
        pipe.delete(key)
        pipe.hset(key, mapping={"sha256": digest, **({"previous": previous} if previous else {})})
        if record.expires_at is not None:
            pipe.expireat(key, record.expires_at)
        if seq is not None:  # a new token (its id may have been used before): last in order
            pipe.zadd(self.ids_key, {record.id: seq})
        if record.team is not None:  # (left out of it lazily, see storage/team_index.py)
            pipe.sadd(self.store.team_tokens_key(record.team), record.id)

    def _transaction(self, token_id: str, body: Callable[[Any], T]) -> T:
        """Run `body(pipe)` under WATCH of the id's entry (it reads, calls multi(), queues
        writes) and execute; again from the start if the entry changed meanwhile."""
        with self.store.redis_errors(), self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(self.id_key(token_id))
                    result = body(pipe)
                    pipe.execute()
                    return result
                except redis.WatchError:
                    continue

    def _forget_if_gone(self, token_id: str) -> None:
        """Drop the id's entry if its token no longer exists (lazy clean-up; a user that
        may only read leaves it to the next writer)."""

        def write(pipe: Any) -> bool:
            alive = self._read(pipe, token_id) is not None
            pipe.multi()
            if alive:  # re-made meanwhile: keep it (an empty MULTI is not allowed everywhere)
                pipe.exists(self.id_key(token_id))
            else:
                pipe.delete(self.id_key(token_id))
                pipe.zrem(self.ids_key, token_id)
            return not alive

        with contextlib.suppress(StoreRefused, MalformedRecord):
            self.forgotten += self._transaction(token_id, write)
