"""A dict bounded by entries and by bytes, for every cache whose keys or values clients choose.

Sizes are estimates given by the caller (the lengths of the strings a value holds plus a
fixed overhead): what matters is that a client who sends large or many distinct values
cannot grow a cache past its byte budget, whatever the entry count.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

ENTRY_OVERHEAD = 200  # bytes: a dict slot, a tuple and a few small objects


def text_size(parts: Iterable[str | None]) -> int:
    """ENTRY_OVERHEAD plus the lengths of the strings: a cache entry's estimated size."""
    return ENTRY_OVERHEAD + sum(len(p) for p in parts if p)


class BoundedDict(Generic[K, V]):
    """Oldest-first eviction once either `max_entries` or `max_bytes` would be exceeded.

    `get` takes no lock and is the dict's own (a C call: it is on the hot path); writes are
    serialized. An entry larger than the whole byte budget is not kept at all.
    """

    __slots__ = (
        "_bytes",
        "_data",
        "_lock",
        "_sizes",
        "evictions",
        "get",
        "max_bytes",
        "max_entries",
    )

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.evictions = 0
        self._data: dict[K, V] = {}
        self._sizes: dict[K, int] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        self.get: Callable[[K], V | None] = self._data.get

    def put(self, key: K, value: V, size: int) -> None:
        if size > self.max_bytes or self.max_entries <= 0:
            return
        with self._lock:
            self._remove(key)
            data = self._data
            while data and (len(data) >= self.max_entries or self._bytes + size > self.max_bytes):
                self._remove(next(iter(data)))
                self.evictions += 1
            # the size first: a reader may find the value as soon as it is in _data
            self._sizes[key] = size
            data[key] = value
            self._bytes += size

    def pop(self, key: K) -> None:
        with self._lock:
            self._remove(key)

    def items(self) -> list[tuple[K, V]]:
        """A snapshot of the entries, oldest first."""
        with self._lock:
            return list(self._data.items())

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._sizes.clear()
            self._bytes = 0

    def _remove(self, key: K) -> None:
        if self._data.pop(key, _MISSING) is not _MISSING:
            self._bytes -= self._sizes.pop(key)

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data


_MISSING = object()
