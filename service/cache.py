"""The query embedding cache: text embeddings by the normalised text, the model bundle's fingerprint and the
text encoder's precision, so that a reload of another bundle or precision can never answer from a stale entry.

Its memory is bounded and accounted exactly, so that a long run with ever new queries levels off instead of
creeping (a soak measures that):
- vectors live in one float32 slab of ``rows x dim``, allocated zeroed on the first entry (the kernel maps its
  pages as rows are first written) and reused slot by slot: no per-entry array, no fragmentation of the heap by
  long-lived small objects among each request's garbage;
- a key holds a 128-bit BLAKE2b digest of the text, not the text: an 8,000-character query costs 16 bytes;
- ``rows`` is the smaller of the entry bound and what the byte bound allows.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from service.encode_fns import TextEmbedding

# what an entry costs besides its slab row: the ordered dict's node, the key tuple and its digest, the slot
# number (tracemalloc over 20,000 puts of 500-character texts: 219 bytes, whatever the text's length)
ENTRY_OVERHEAD = 224
Key = tuple[str, str, str]  # (normalised text, model fingerprint, precision)


class TextEmbeddingCache:
    """A thread-safe LRU of text embeddings, at most ``capacity`` entries and ``max_bytes`` bytes (slab rows
    and bookkeeping); ``capacity`` 0 stores nothing.

    ``on_lookup(hit)`` is called once per looked-up key (metrics); it must not raise."""

    def __init__(self, capacity: int, max_bytes: int, on_lookup: Callable[[bool], None] | None = None) -> None:
        if capacity < 0 or max_bytes < 0:
            raise ValueError("capacity and max_bytes must be >= 0")
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._on_lookup = on_lookup
        self._lock = threading.Lock()
        self._slots: OrderedDict[tuple[bytes, str, str], int] = OrderedDict()
        self._vectors = np.zeros((0, 0), np.float32)
        self._tokens = np.zeros(0, np.int32)
        self._truncated = np.zeros(0, bool)
        self._free: list[int] = []
        self._used = 0  # slab rows ever written: the ones whose pages are mapped

    def __len__(self) -> int:
        return len(self._slots)

    @property
    def nbytes(self) -> int:
        """Memory the cache holds now: the slab rows written so far and each entry's bookkeeping."""
        return self._used * self._row_bytes(self._vectors.shape[1]) + len(self._slots) * ENTRY_OVERHEAD

    @staticmethod
    def _row_bytes(dim: int) -> int:
        return dim * 4 + 4 + 1  # vector, tokens, truncated

    @staticmethod
    def _digest(key: Key) -> tuple[bytes, str, str]:
        text, model, precision = key
        return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest(), model, precision

    def get(self, key: Key) -> TextEmbedding | None:
        digest = self._digest(key)
        with self._lock:
            slot = self._slots.get(digest)
            found = None
            if slot is not None:
                self._slots.move_to_end(digest)
                found = TextEmbedding(self._vectors[slot].copy(), int(self._tokens[slot]),
                                      bool(self._truncated[slot]))
        if self._on_lookup is not None:
            self._on_lookup(found is not None)
        return found

    def put(self, key: Key, value: TextEmbedding) -> None:
        if self.capacity == 0:
            return
        digest = self._digest(key)
        vector = np.asarray(value.vector, np.float32).reshape(-1)
        with self._lock:
            if vector.shape[0] != self._vectors.shape[1]:
                self._allocate(vector.shape[0])  # the first entry, or a model of another width
            if not len(self._vectors):
                return  # the byte bound leaves no room for a single entry
            slot = self._slots.pop(digest, None)
            if slot is None:
                slot = self._take_slot()
            self._slots[digest] = slot
            self._vectors[slot] = vector
            self._tokens[slot] = value.tokens
            self._truncated[slot] = value.truncated

    def _allocate(self, dim: int) -> None:
        rows = min(self.capacity, self.max_bytes // (self._row_bytes(dim) + ENTRY_OVERHEAD))
        self._slots.clear()
        self._free.clear()
        self._used = 0
        self._vectors = np.zeros((rows, dim), np.float32)
        self._tokens = np.zeros(rows, np.int32)
        self._truncated = np.zeros(rows, bool)

    def _take_slot(self) -> int:
        if self._free:
            return self._free.pop()
        if self._used < len(self._vectors):
            self._used += 1
            return self._used - 1
        _, slot = self._slots.popitem(last=False)  # full: the least recently used gives up its row
        return slot

    def clear(self) -> None:
        with self._lock:
            self._free.extend(self._slots.values())
            self._slots.clear()
