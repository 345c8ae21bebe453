"""The query embedding cache: an LRU of text embeddings, keyed by the normalised text, the model bundle's
fingerprint and the text encoder's precision, so that a reload of another bundle or precision can never
answer from a stale entry."""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

V = TypeVar("V")


# bytes an entry costs besides its text and its vector's data: the dict's node, the key tuple, the embedding's
# objects (tracemalloc over 5,000 puts of a (text, model, precision) key and a TextEmbedding: 405)
ENTRY_OVERHEAD = 400


class LRUCache(Generic[V]):
    """A thread-safe LRU of at most ``capacity`` entries and ``max_bytes`` bytes (as ``sizeof`` counts an
    entry); ``capacity`` 0 stores nothing. The byte bound is what keeps memory flat when entries differ in
    size: a 4,096-wide LLM embedding is 16 KiB, a long query 8 KiB more.

    ``on_lookup(hit)`` is called once per looked-up key (metrics); it must not raise."""

    def __init__(self, capacity: int, on_lookup: Callable[[bool], None] | None = None,
                 max_bytes: int | None = None, sizeof: Callable[[Hashable, V], int] | None = None) -> None:
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        if max_bytes is not None and max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._sizeof = sizeof or (lambda key, value: ENTRY_OVERHEAD)
        self._data: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._on_lookup = on_lookup

    def __len__(self) -> int:
        return len(self._data)

    @property
    def nbytes(self) -> int:
        """What the entries held now cost, as ``sizeof`` counts them."""
        return self._bytes

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            entry = self._data.get(key)
            if entry is not None:
                self._data.move_to_end(key)
        if self._on_lookup is not None:
            self._on_lookup(entry is not None)
        return None if entry is None else entry[0]

    def put(self, key: Hashable, value: V) -> None:
        if self.capacity == 0:
            return
        size = self._sizeof(key, value)
        if self.max_bytes is not None and size > self.max_bytes:
            return  # larger than the whole cache: keeping it would evict everything else
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._data[key] = (value, size)
            self._bytes += size
            while len(self._data) > self.capacity or (self.max_bytes is not None and self._bytes > self.max_bytes):
                _, (_, evicted) = self._data.popitem(last=False)
                self._bytes -= evicted

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._bytes = 0


def text_entry_size(key: tuple[str, ...], value: Any) -> int:
    """What a query cache entry holds in memory: the normalised text, the vector's data, the overhead (the
    model fingerprint and precision in the key are shared strings)."""
    return sys.getsizeof(key[0]) + int(value.vector.nbytes) + ENTRY_OVERHEAD
