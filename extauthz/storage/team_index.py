"""Teams in Redis: their records, the list of them, and the tokens of each (docs/redis.md).

    {prefix}team:<id>          HASH  the record (core/team_record.py): the decision path
                                     reads it (through the token cache)
    {prefix}team-ids           ZSET  member: id, score: creation time (`team list` order)
    {prefix}team-tokens:<id>   SET   ids of the tokens made or moved into the team (a token
                                     revoked, expired or moved out is dropped when met)

Only the CLI and the management API write these, each change in one MULTI under WATCH of
the team's key. A team's tokens are read from its own set (no scan of every token); an id
whose token no longer names the team is left out and removed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import redis

from extauthz.core.team_record import TeamRecord
from extauthz.errors import MalformedRecord, TeamExists, TeamHasTokens, UnknownTeam
from extauthz.storage.store import Store

PAGE = 500  # ids per round trip when listing
T = TypeVar("T")


class TeamIndex:
    """Create, read, change, list and delete teams; find a team's tokens."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.client = store.client
        self.ids_key = f"{store.prefix}team-ids"

    def tokens_key(self, team_id: str) -> str:
        return self.store.team_tokens_key(team_id)

    def create(self, record: TeamRecord) -> None:
        """Write a new team; TeamExists when its id is taken."""

        def write(pipe: Any) -> None:
            if pipe.exists(self.store.team_key(record.id)):
                raise TeamExists(record.id)
            pipe.multi()
            pipe.hset(self.store.team_key(record.id), mapping=record.to_fields())
            pipe.zadd(self.ids_key, {record.id: record.created_at or 0})

        self._transaction(record.id, write)

    def get(self, team_id: str) -> TeamRecord:
        """The team's record; UnknownTeam, or MalformedRecord for one edited badly by hand."""
        found = self.store.team_record(team_id)
        if found is None:
            raise UnknownTeam(team_id)
        return found

    def update(self, team_id: str, change: Callable[[TeamRecord], TeamRecord]) -> TeamRecord:
        """Replace the team's record with `change(current)` (again if it changed meanwhile)."""

        def write(pipe: Any) -> TeamRecord:
            fields = pipe.hgetall(self.store.team_key(team_id))
            if not fields:
                raise UnknownTeam(team_id)
            new = change(TeamRecord.from_fields(team_id, fields))
            pipe.multi()
            pipe.delete(self.store.team_key(team_id))
            pipe.hset(self.store.team_key(team_id), mapping=new.to_fields())
            return new

        return self._transaction(team_id, write)

    def delete(self, team_id: str, members: Callable[[], list[str]]) -> None:
        """Delete the team; TeamHasTokens while `members()` names any token."""

        def write(pipe: Any) -> None:
            if not pipe.exists(self.store.team_key(team_id)):
                raise UnknownTeam(team_id)
            left = members()
            if left:
                raise TeamHasTokens(team_id, len(left))
            pipe.multi()
            pipe.delete(self.store.team_key(team_id), self.tokens_key(team_id))
            pipe.zrem(self.ids_key, team_id)

        self._transaction(team_id, write)

    def stream(self) -> Iterator[TeamRecord | MalformedRecord]:
        """Every team, in creation order, PAGE ids a round trip (records edited badly by
        hand come as their MalformedRecord, to be shown as such)."""
        start = 0
        while True:
            with self.store.redis_errors():
                ids = self.client.zrange(self.ids_key, start, start + PAGE - 1)
                pipe = self.client.pipeline(transaction=False)
                for team_id in ids:
                    pipe.hgetall(self.store.team_key(team_id))
                found = pipe.execute() if ids else []
            for team_id, fields in zip(ids, found, strict=True):
                if not fields:
                    continue  # (deleted by hand)
                try:
                    yield TeamRecord.from_fields(team_id, fields)
                except MalformedRecord as e:
                    yield e
            if len(ids) < PAGE:
                return
            start += PAGE

    def member_ids(self, team_id: str) -> list[str]:
        """The ids of the tokens added to the team's set (some may have left it since:
        see `admin/teams.py`, which checks each against its record)."""
        with self.store.redis_errors():
            return sorted(self.client.smembers(self.tokens_key(team_id)))

    def forget(self, team_id: str, token_ids: list[str]) -> None:
        """Drop ids whose tokens left the team (revoked, expired, moved)."""
        if token_ids:
            with self.store.redis_errors():
                self.client.srem(self.tokens_key(team_id), *token_ids)

    def _transaction(self, team_id: str, body: Callable[[Any], T]) -> T:
        with self.store.redis_errors(), self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(self.store.team_key(team_id), self.tokens_key(team_id))
                    result = body(pipe)
                    pipe.execute()
                    return result
                except redis.WatchError:
                    continue
