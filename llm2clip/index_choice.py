"""Which FAISS index a corpus gets, from its size and a memory budget (autofaiss' rules, rewritten here).

Exact search while it is cheap; past that an HNSW graph over the full vectors while they and the graph fit
the budget (the fastest single queries at high recall); an IVF over the full vectors when only the vectors
fit, or when the index must be memory-mappable (FAISS maps IVF inverted lists only); OPQ + IVF-PQ when the
full vectors do not fit. ``estimate_bytes`` is the index's size in memory, the thing the budget bounds; the
vectors held while building are not counted.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from llm2clip.errors import LLM2CLIPError

# the share of the machine's memory an index may take by default: the serving process also holds the text and
# image encoders, the item store and its request buffers, and several replicas may share one host
DEFAULT_MEMORY_FRACTION = 0.25
# exact search while a query scans at most this many floats: 200k rows at 256 dims, ~200 MB, ~20 ms on one core,
# small beside the ~250 ms the text encoder takes for one query
FLAT_MAX_FLOATS = 200_000 * 256
# PQ codebooks need 256 training points per centroid set (faiss warns below 39 x 256)
QUANTIZE_MIN_ROWS = 10_000
HNSW_MAX_M = 32  # more links cost memory and build time for little recall at these sizes (autofaiss' cap)
HNSW_MIN_M = 8
# the coarse quantizer becomes an HNSW graph from this many lists: a flat one would cost more per query than
# the lists it picks (autofaiss does so for every quantized index with 1000 lists or more)
HNSW_COARSE_MIN_LISTS = 16_384
MIN_POINTS_PER_LIST = 39  # faiss' k-means warns below this many training points per centroid
PQ_BYTES = (128, 64, 48, 32, 24, 16, 8, 4)  # bytes per vector tried, most accurate first
ID_BYTES = 8  # every IVF entry stores its row id as int64

_IVF = re.compile(r"^(?:OPQ(\d+)(?:_(\d+))?,)?IVF(\d+)(?:_HNSW(\d+))?,(?:Flat|PQ(\d+)(?:x(\d+))?)$")
_HNSW = re.compile(r"^HNSW(\d+)(?:,Flat)?$")


class MemoryBudgetError(LLM2CLIPError):
    """The machine's memory cannot be read, or a budget given is not a positive number of bytes."""


@dataclass(frozen=True)
class IndexChoice:
    factory: str  # a FAISS index_factory string
    reason: str  # one sentence: why this index for this corpus
    estimated_bytes: int | None  # the index's size in memory (``estimate_bytes``); None: not estimated
    memory_budget_bytes: int  # the budget it was chosen under


def physical_memory_bytes() -> int:
    """The memory this process may use: physical RAM, or a container's cgroup limit when that is lower."""
    total = 0
    if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:  # Linux, macOS, the BSDs
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    elif os.name == "nt":
        total = _windows_memory()
    if total <= 0:
        raise MemoryBudgetError("cannot read this machine's memory size: give the index memory budget in bytes")
    return min(total, _cgroup_limit() or total)


def _windows_memory() -> int:
    import ctypes

    class Status(ctypes.Structure):
        _fields_ = [("dwLength", ctypes.c_ulong), ("dwMemoryLoad", ctypes.c_ulong),
                    ("ullTotalPhys", ctypes.c_ulonglong), ("rest", ctypes.c_ulonglong * 6)]

    status = Status(dwLength=ctypes.sizeof(Status))
    ok = ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status))  # type: ignore[attr-defined]
    return int(status.ullTotalPhys) if ok else 0


def _cgroup_limit() -> int | None:
    """A container's memory limit (cgroup v2, then v1); None when unlimited or not in a cgroup."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # v1 says "unlimited" with a huge number
            return int(text)
    return None


def memory_budget(budget_bytes: int | None = None) -> int:
    """``budget_bytes`` when given, else DEFAULT_MEMORY_FRACTION of ``physical_memory_bytes()``."""
    if budget_bytes is None:
        return int(physical_memory_bytes() * DEFAULT_MEMORY_FRACTION)
    if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int) or budget_bytes <= 0:
        raise MemoryBudgetError(f"the index memory budget must be a positive number of bytes, not {budget_bytes!r}")
    return budget_bytes


def nlist_for(count: int) -> int:
    """Inverted lists for ``count`` vectors: 4·sqrt(n) rounded to a power of two (FAISS' guideline is 4-16·sqrt(n)),
    at most one list per 39 vectors so k-means has enough points per centroid."""
    lists = 2 ** round(math.log2(max(4 * math.sqrt(max(count, 1)), 1)))
    while lists > 1 and lists * MIN_POINTS_PER_LIST > count:
        lists //= 2
    return max(lists, 1)


def estimate_bytes(factory: str, count: int, dim: int) -> int | None:
    """The index's size in memory for the factory strings this module writes; None for any other."""
    if factory == "Flat":
        return count * dim * 4
    hnsw = _HNSW.match(factory)
    if hnsw:  # vectors, 2M int32 links at level 0 (upper levels add ~1/M more), a level and an offset a row
        m = int(hnsw.group(1))
        return count * (dim * 4 + 2 * m * 4 + 12)
    ivf = _IVF.match(factory)
    if not ivf:
        return None
    opq_m, opq_d, nlist, coarse_m, pq_m, pq_bits = ivf.groups()
    inner = int(opq_d) if opq_d else dim
    nlist = int(nlist)
    total = nlist * inner * 4  # centroids
    if coarse_m:
        total += nlist * (2 * int(coarse_m) * 4 + 12)
    if opq_m:
        total += dim * inner * 4
    if pq_m:
        bits = int(pq_bits or 8)
        total += count * (math.ceil(int(pq_m) * bits / 8) + ID_BYTES) + (1 << bits) * inner * 4
    else:
        total += count * (inner * 4 + ID_BYTES)
    return total


def _ivf_key(count: int) -> str:
    nlist = nlist_for(count)
    return f"IVF{nlist}_HNSW32" if nlist >= HNSW_COARSE_MIN_LISTS else f"IVF{nlist}"


def _quantized(count: int, dim: int, budget: int) -> tuple[str, int]:
    """The most accurate OPQ + IVF-PQ that fits, or the smallest when none does: OPQ rotates (and, for short
    codes, reduces) to D = min(4m, d) dims, 4 dims a sub-quantizer (FAISS' OPQ{m}_{4m} guideline)."""
    tried: list[tuple[str, int]] = []
    for m in PQ_BYTES:
        if 2 * m > dim:
            continue
        inner = min(4 * m, dim // m * m)
        factory = f"OPQ{m}_{inner},{_ivf_key(count)},PQ{m}x8"
        size = estimate_bytes(factory, count, dim) or 0
        if size <= budget:
            return factory, size
        tried.append((factory, size))
    return tried[-1]


def choose_index(count: int, dim: int, memory_budget_bytes: int | None = None,
                 memory_mappable: bool = False) -> IndexChoice:
    """The index for ``count`` vectors of ``dim`` under a memory budget (bytes; None: DEFAULT_MEMORY_FRACTION of
    this machine's memory). ``memory_mappable`` skips HNSW, which FAISS cannot map from disk."""
    if count <= 0 or dim <= 0:
        raise ValueError(f"count and dim must be positive, not {count} and {dim}")
    budget = memory_budget(memory_budget_bytes)
    flat = count * dim * 4
    within = f"within the {_size(budget)} budget"
    if count * dim <= FLAT_MAX_FLOATS and flat <= budget:
        return IndexChoice("Flat", f"{count:,} x {dim} floats ({_size(flat)}) are few enough for exact search "
                           f"and fit the {_size(budget)} budget", flat, budget)
    if count < QUANTIZE_MIN_ROWS:
        return IndexChoice("Flat", f"{count:,} vectors ({_size(flat)}) exceed the {_size(budget)} budget, but PQ "
                           f"needs {QUANTIZE_MIN_ROWS:,} to train: exact search over all of them", flat, budget)
    hnsw_m = min(HNSW_MAX_M, (budget // count - dim * 4 - 12) // 8)
    if not memory_mappable and hnsw_m >= HNSW_MIN_M:
        factory = f"HNSW{hnsw_m},Flat"
        size = estimate_bytes(factory, count, dim) or 0
        return IndexChoice(factory, f"the vectors plus an HNSW graph of {hnsw_m} links a node ({_size(size)}) fit "
                           f"{within}, and HNSW answers single queries fastest at high recall", size, budget)
    factory = f"{_ivf_key(count)},Flat"
    size = estimate_bytes(factory, count, dim) or 0
    if size <= budget:
        why = ("a memory-mappable index was asked for" if memory_mappable
               else "no HNSW graph of 8 or more links fits beside them")
        return IndexChoice(factory, f"the full vectors in {nlist_for(count)} inverted lists ({_size(size)}) fit "
                           f"{within} and {why}", size, budget)
    factory, size = _quantized(count, dim, budget)
    fits = "fits" if size <= budget else "is the smallest code tried and still exceeds"
    return IndexChoice(factory, f"the full vectors ({_size(flat)}) exceed the {_size(budget)} budget: OPQ + IVF-PQ "
                       f"({_size(size)}) {fits} it", size, budget)


def _size(n: int) -> str:
    """Bytes for a person: 1.3 GB, 88.0 MB (powers of 1024)."""
    value, unit = float(n), "B"
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            break
        value /= 1024
    return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"


__all__ = ["DEFAULT_MEMORY_FRACTION", "IndexChoice", "MemoryBudgetError", "choose_index", "estimate_bytes",
           "memory_budget", "nlist_for", "physical_memory_bytes"]
