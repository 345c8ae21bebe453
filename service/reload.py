"""Zero-downtime index reload: notice a new version of a configured index bundle, load and check it off
the event loop, and swap it in while requests keep running.

Two ways in: a watcher thread that looks at each index folder's manifest.json every
``LLM2CLIP_RELOAD_INTERVAL_S`` seconds (a stat first: inode, mtime, size; the manifest's hash only when
that changed), and ``POST /admin/reload``. Index builds publish by renaming a finished folder into the
configured path, so a changed manifest means a whole new bundle. A new version is loaded with the
service's verify setting and checked against the served model (fingerprint, dim) and modality; a broken,
half-written or mismatched one is refused, logged, counted, and remembered so that the watcher does not
try it again every few seconds, while the old index keeps serving.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from llm2clip.bundle import MANIFEST, ModelBundle
from llm2clip.errors import LLM2CLIPError
from service.indexes import IndexSet, ServedIndex, load_checked, read_version
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger(__name__)

Stat = tuple[int, int, int, int] | None  # (device, inode, mtime ns, size) of a manifest; None: there is none
_UNSEEN = (-1, -1, -1, -1)  # matches no file: the first look always reads the manifest


@dataclass(frozen=True)
class ReloadOutcome:
    """What one look at one index found and did."""

    index: str  # "image" or "text"
    status: Literal["loaded", "unchanged", "refused"]
    version: str  # the version served after this look
    count: int  # rows of the index served after this look
    previous: str | None = None  # loaded: the version it replaced
    refused: str | None = None  # refused: the version refused (None: the folder had no manifest)
    reason: str | None = None  # refused: why, in words that say what to fix

    def describe(self) -> str:
        if self.status == "refused":
            return (f"{self.index} index version {self.refused or '(no manifest)'} refused: {self.reason}; "
                    f"still serving {self.version}")
        if self.status == "loaded":
            return f"{self.index} index version {self.version} ({self.count} rows) loaded, replacing {self.previous}"
        return f"{self.index} index version {self.version} unchanged"


def show_index(metrics: Metrics, modality: str, served: ServedIndex, previous: ServedIndex | None = None) -> None:
    """Point the index gauges at ``served``: exactly one llm2clip_index_info series per index."""
    if previous is not None:
        try:
            metrics.index_info.remove(modality, previous.bundle.model_fingerprint[:12], previous.version)
        except KeyError:  # never shown (set up by another app sharing the resources)
            pass
    metrics.index_info.labels(index=modality, model_fingerprint=served.bundle.model_fingerprint[:12],
                              version=served.version).set(1)
    metrics.index_items.labels(index=modality).set(served.bundle.count)


def _stat(path: Path) -> Stat:
    try:
        st = os.stat(path / MANIFEST)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


class IndexReloader:
    """Looks for new versions of the configured indexes and swaps them in; one look at a time (the watcher
    and the admin call share a lock, so the same version is never loaded twice)."""

    def __init__(self, settings: Settings, indexes: IndexSet, model: ModelBundle, metrics: Metrics) -> None:
        configured = (("image", settings.image_index), ("text", settings.text_index))
        self.paths = {m: Path(p) for m, p in configured if p is not None and indexes.served(m)}
        self._verify = settings.verify_bundles
        self._device = settings.index_device
        self._mmap = settings.index_mmap
        self._indexes = indexes
        self._model = model  # the served model: never reloaded, so new indexes must match it
        self._metrics = metrics
        self._lock = threading.Lock()
        self._seen: dict[str, Stat] = dict.fromkeys(self.paths, _UNSEEN)
        self._refused: dict[str, str | None] = {}  # by modality: the version last refused
        for modality in self.paths:
            for result in ("ok", "refused"):  # present from the start: rate() and alerts read 0, not nothing
                metrics.index_reloads.labels(index=modality, result=result)

    def poll(self) -> list[ReloadOutcome]:
        """The watcher's look: reads only manifests whose stat changed, and does not try again a version it
        refused (a fixed bundle is a new version; POST /admin/reload retries on demand). Returns the outcome
        of each new version tried."""
        outcomes = []
        for modality in self.paths:
            with self._lock:
                outcome = self._look(modality, retry=False)
            if outcome is not None:
                outcomes.append(outcome)
        return outcomes

    def reload(self, modality: str | None = None) -> list[ReloadOutcome]:
        """The admin call's look at one index (or every configured one): reads each manifest, and tries a
        new version even if it was refused before."""
        if modality is not None and modality not in self.paths:
            raise ValueError(f"no {modality} index is configured")
        outcomes = []
        for m in [modality] if modality is not None else list(self.paths):
            with self._lock:
                outcome = self._look(m, retry=True)
            assert outcome is not None  # a retrying look always answers
            outcomes.append(outcome)
        return outcomes

    def _look(self, modality: str, retry: bool) -> ReloadOutcome | None:
        path = self.paths[modality]
        stat = _stat(path)
        if not retry and stat == self._seen[modality]:
            return None
        self._seen[modality] = stat
        if stat is None and not retry:
            # no manifest: a publish between its two renames (the old version moved away, the new not yet in),
            # or the index removed. Nothing to load; the version served stays, and the poll that finds a
            # manifest looks at it. Only the admin call reports a missing index (as refused).
            return None
        served = self._served(modality)
        version = read_version(path)
        if version == served.version:
            self._refused.pop(modality, None)
            return ReloadOutcome(modality, "unchanged", served.version, served.bundle.count) if retry else None
        if not retry and modality in self._refused and self._refused[modality] == version:
            return None
        try:
            new = load_checked(path, modality, self._model, self._verify, self._device, self._mmap)
        except LLM2CLIPError as exc:
            return self._refuse(modality, version, " ".join(str(exc).split()))
        except Exception as exc:
            # not a BundleError: say what kind, keep the details (paths, internals) for the log
            log.exception("index %s: loading version %s failed", modality, version)
            return self._refuse(modality, version, f"{type(exc).__name__} while loading it; the server log "
                                                   "has the details")
        return self._swap(modality, new, served)

    def _served(self, modality: str) -> ServedIndex:
        served = self._indexes.served(modality)
        assert served is not None  # configured indexes are loaded at startup, and a swap never empties a slot
        return served

    def _swap(self, modality: str, new: ServedIndex, served: ServedIndex) -> ReloadOutcome:
        if new.version == served.version:  # it changed back while we looked
            new.release()
            return ReloadOutcome(modality, "unchanged", served.version, served.bundle.count)
        try:
            self._indexes.swap(modality, new)
        except LLM2CLIPError as exc:  # shutting down: not the bundle's fault, so not remembered
            return ReloadOutcome(modality, "refused", served.version, served.bundle.count, refused=new.version,
                                 reason=str(exc))
        show_index(self._metrics, modality, new, served)
        self._metrics.index_reloads.labels(index=modality, result="ok").inc()
        self._refused.pop(modality, None)
        log.info("index %s: version %s (%d rows) now serves, replacing %s (closed once its last request ends)",
                 modality, new.version, new.bundle.count, served.version)
        return ReloadOutcome(modality, "loaded", new.version, new.bundle.count, previous=served.version)

    def _refuse(self, modality: str, version: str | None, reason: str) -> ReloadOutcome:
        served = self._served(modality)
        self._refused[modality] = version
        self._metrics.index_reloads.labels(index=modality, result="refused").inc()
        outcome = ReloadOutcome(modality, "refused", served.version, served.bundle.count, refused=version,
                                reason=reason)
        log.warning("%s", outcome.describe())
        return outcome


class Watcher:
    """Runs ``reloader.poll`` every ``interval_s`` seconds in a daemon thread, from ``start`` to ``stop``."""

    def __init__(self, reloader: IndexReloader, interval_s: float) -> None:
        self._reloader = reloader
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llm2clip-index-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ends the thread. A load under way may outlast ``timeout_s``: its swap is then refused, because the
        indexes are closed by then, and the new bundle closed with it."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._reloader.poll()
            except Exception:  # a bug here must not end the watching
                log.exception("index watcher: a look at the index folders failed")
