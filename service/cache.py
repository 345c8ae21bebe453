"""The query embedding cache: an LRU of text embeddings, keyed by the normalised text, the model bundle's
fingerprint and the text encoder's precision, so that a reload of another bundle or precision can never
answer from a stale entry."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class LRUCache(Generic[V]):
    """A thread-safe LRU of at most ``capacity`` entries; ``capacity`` 0 stores nothing.

    ``on_lookup(hit)`` is called once per looked-up key (metrics); it must not raise."""

    def __init__(self, capacity: int, on_lookup: Callable[[bool], None] | None = None) -> None:
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self.capacity = capacity
        self._data: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.Lock()
        self._on_lookup = on_lookup

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
        if self._on_lookup is not None:
            self._on_lookup(value is not None)
        return value

    def put(self, key: Hashable, value: V) -> None:
        if self.capacity == 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.capacity:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
