"""The indexes being served, swappable while requests run.

Each request leases the index bundle that is current when it starts and searches and reads records through
that one bundle; a swap only replaces the reference in the slot. A replaced bundle is closed when its last
lease ends, so no request ever sees a closed bundle and none mixes two versions. The only lock a search
touches is a holder count's, taken for a few instructions at the start and the end, never across FAISS.

The version of an index is a short sha256 of its ``manifest.json``: the manifest lists every file's sha256
and the creation time, so the hash names the bundle's whole content.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from llm2clip.bundle import MANIFEST, ModelBundle
from llm2clip.errors import BundleError, SettingError
from llm2clip.index import IndexBundle, load_index

VERSION_CHARS = 12
LOAD_ATTEMPTS = 3


def index_setting(modality: str) -> str:
    """The environment variable that names the index of ``modality``."""
    return f"LLM2CLIP_{modality.upper()}_INDEX"


def manifest_version(data: bytes) -> str:
    """The version of an index bundle whose manifest.json holds ``data``."""
    return hashlib.sha256(data).hexdigest()[:VERSION_CHARS]


def read_manifest_bytes(folder: str | Path) -> bytes | None:
    """The bytes of ``folder``'s manifest.json now; None when there is none (not built, or mid-rename)."""
    try:
        return (Path(folder) / MANIFEST).read_bytes()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


def read_version(folder: str | Path) -> str | None:
    data = read_manifest_bytes(folder)
    return None if data is None else manifest_version(data)


class ServedIndex:
    """One loaded index bundle, its version and its holders: the slot serving it counts as one, each
    request, and each worker thread searching for one, as another. The last release closes the bundle."""

    def __init__(self, bundle: IndexBundle, version: str) -> None:
        self.bundle = bundle
        self.version = version
        self.closed = False
        self._holders = 1  # the caller's: the slot it is put in, or whoever loaded it
        self._lock = threading.Lock()

    def retain(self) -> bool:
        """One more holder; False when the bundle is already closed (a swap replaced it and its last holder
        left between the caller reading the slot and this call)."""
        with self._lock:
            if self._holders == 0:
                return False
            self._holders += 1
            return True

    def release(self) -> None:
        with self._lock:
            if self._holders == 0:
                raise RuntimeError(f"index {self.version} released more often than held")
            self._holders -= 1
            last = self._holders == 0
        if last:
            self.closed = True
            self.bundle.close()


class IndexSet(Mapping[str, IndexBundle]):
    """The served index of each modality ("image", "text").

    Reading it (``indexes["image"]``, ``.get``, ``.items()``) gives the current bundle, for its manifest
    facts only (count, dim, model): it may be swapped out and closed at any moment. A search takes a
    ``lease`` instead.
    """

    def __init__(self, served: Mapping[str, ServedIndex] | None = None) -> None:
        self._slots: dict[str, ServedIndex] = dict(served or {})
        self._swap_lock = threading.Lock()  # swap against close; never taken by a request
        self._closed = False

    def __getitem__(self, modality: str) -> IndexBundle:
        return self._slots[modality].bundle

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._slots))

    def __len__(self) -> int:
        return len(self._slots)

    def served(self, modality: str) -> ServedIndex | None:
        """The current ``ServedIndex`` (its version, its bundle), not held."""
        return self._slots.get(modality)

    def version(self, modality: str) -> str | None:
        served = self._slots.get(modality)
        return None if served is None else served.version

    def acquire(self, modality: str) -> ServedIndex | None:
        """The current index of ``modality``, held until ``release``; None when there is none (or the set
        is closed)."""
        while True:
            served = self._slots.get(modality)
            if served is None or served.retain():
                return served
            # closed under us: a swap put its successor in the slot before releasing it, so read again,
            # unless nothing replaced it (the whole set was closed)
            if self._slots.get(modality) is served:
                return None

    @contextmanager
    def lease(self, modality: str) -> Iterator[ServedIndex | None]:
        served = self.acquire(modality)
        try:
            yield served
        finally:
            if served is not None:
                served.release()

    def swap(self, modality: str, new: ServedIndex) -> ServedIndex | None:
        """Serve ``new`` (whose one hold passes to the slot); returns the index it replaced, released: that one
        closes when its last lease ends. Once the set is closed (shutdown), ``new`` is closed instead and
        BundleError raised."""
        with self._swap_lock:
            if self._closed:
                new.release()
                raise BundleError("the service is shutting down: the new index was not swapped in")
            old = self._slots.get(modality)
            self._slots[modality] = new
        if old is not None:
            old.release()
        return old

    def close(self) -> None:
        """Release every slot: each bundle closes now, or when the last request still holding it ends."""
        with self._swap_lock:
            if self._closed:
                return
            self._closed = True
            served = list(self._slots.values())
        for s in served:
            s.release()


def load_checked(path: Path, modality: str, model: ModelBundle, verify: bool, device: str,
                 mmap: bool = False) -> ServedIndex:
    """Load the index bundle at ``path`` and check it can serve as the ``modality`` index of ``model``:
    raises SettingError (wrong modality) or BundleError (missing, corrupt, another model or dim).

    The manifest is read before and after the load: a bundle published into ``path`` while it loaded could
    have mixed files of two versions, so such a load is thrown away and done again.
    """
    for _ in range(LOAD_ATTEMPTS):
        before = read_manifest_bytes(path)
        index = load_index(path, verify=verify, device=device, mmap=mmap)
        try:
            _check(index, path, modality, model)
            after = read_manifest_bytes(path)
            if before is not None and before == after and json.loads(before) == index.manifest:
                return ServedIndex(index, manifest_version(before))
        except BaseException:
            index.close()
            raise
        index.close()
    raise BundleError(f"index {path} changed while it was loading, {LOAD_ATTEMPTS} times: publish bundles by "
                      "renaming a finished folder into place (as `llm2clip index build` does), not in place")


def _check(index: IndexBundle, path: Path, modality: str, model: ModelBundle) -> None:
    if index.modality != modality:
        raise SettingError(
            f"{path} is a {index.modality} index, but it was given as the {modality} index: "
            f"pass it as {index_setting(index.modality)}", f"{index.modality}_index")
    index.check_model(model.fingerprint)
    if index.dim != model.embed_dim:
        raise BundleError(f"index {path} has dim {index.dim}, the model {model.embed_dim}: rebuild the index")
