"""What the service holds while it runs: the model bundle, its encoders, the indexes and the batchers."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llm2clip.bundle import ModelBundle, load_bundle
from llm2clip.encoders import BatchLimits, ImageEncoder, TextEncoder, load_encoders
from llm2clip.errors import SettingError
from llm2clip.index import MODALITIES
from service.batching import Batcher
from service.cache import TextEmbeddingCache
from service.encode_fns import TextEmbedding, TokenizedText
from service.indexes import IndexSet, ServedIndex, index_setting, load_checked
from service.metrics import Metrics
from service.reload import IndexReloader
from service.settings import Settings
from service.shutdown import Drain

log = logging.getLogger(__name__)

__all__ = ["Resources", "Runtime", "ServiceState", "index_setting", "load_resources"]


@dataclass
class Resources:
    """Loaded once per process; the CLI loads them before binding the server so errors come first."""

    bundle: ModelBundle
    image_encoder: ImageEncoder
    text_encoder: TextEncoder
    # by modality ("image", "text"); swapped by a reload, each search leasing the one it started with
    indexes: IndexSet = field(default_factory=IndexSet)
    corpus_root: Path | None = None  # kept as found at startup: a reload swaps indexes only

    def warmup(self) -> None:
        self.image_encoder.warmup()
        self.text_encoder.warmup()

    def close(self) -> None:
        self.indexes.close()


@dataclass
class Runtime:
    """Everything a request needs, present only between startup and shutdown."""

    settings: Settings
    metrics: Metrics
    resources: Resources
    text_batcher: Batcher[TokenizedText, TextEmbedding]
    image_batcher: Batcher[np.ndarray, np.ndarray]
    text_cache: TextEmbeddingCache
    reloader: IndexReloader | None = None

    @property
    def alive(self) -> bool:
        return self.text_batcher.alive and self.image_batcher.alive


@dataclass
class ServiceState:
    settings: Settings
    metrics: Metrics
    preloaded: Resources | None = None  # handed in by the caller, who then owns (closes) them
    runtime: Runtime | None = None
    drain: Drain = field(default_factory=Drain)  # set off by SIGTERM (the CLI's server)


def load_indexes(settings: Settings, bundle: ModelBundle) -> IndexSet:
    served: dict[str, ServedIndex] = {}
    try:
        for modality, path in (("image", settings.image_index), ("text", settings.text_index)):
            if path is not None:
                served[modality] = load_checked(Path(path), modality, bundle, settings.verify_bundles,
                                                settings.index_device, settings.index_mmap)
    except BaseException:
        for s in served.values():
            s.release()
        raise
    return IndexSet(served)


def find_corpus_root(settings: Settings, indexes: IndexSet) -> Path | None:
    if settings.corpus_root is not None:
        root = Path(settings.corpus_root).expanduser()
        if not root.is_dir():
            raise SettingError(f"corpus root {root} is not a folder: fix LLM2CLIP_CORPUS_ROOT", "corpus_root")
        return root.resolve()
    for modality in MODALITIES:
        index = indexes.get(modality)
        if index is None:
            continue
        recorded: Any = (index.manifest.get("build") or {}).get("corpus_root")
        if not recorded:
            continue
        root = Path(str(recorded)).expanduser()
        if not root.is_absolute():
            # a relative root can only mean relative to the bundle: the builder's working directory is lost
            root = index.path / root
        if root.is_dir():
            return root.resolve()
        log.warning("corpus root %s recorded in index %s is not a folder: item images are not served; "
                    "set LLM2CLIP_CORPUS_ROOT", root, index.path)
    return None


def load_resources(settings: Settings) -> Resources:
    """Model bundle, indexes (each checked against the model), encoders. Raises BundleError."""
    if settings.model is None:
        raise SettingError("no model bundle given: set LLM2CLIP_MODEL", "model")
    bundle = load_bundle(settings.model, verify=settings.verify_bundles)
    # indexes first: a mismatched index fails in milliseconds, before seconds of ONNX session setup
    indexes = load_indexes(settings, bundle)
    try:
        corpus_root = find_corpus_root(settings, indexes)
        limits = BatchLimits(settings.batch.max_batch_tokens, settings.batch.batch_size)
        image_encoder, text_encoder = load_encoders(bundle, settings.precision, providers=settings.providers,
                                                    threads=settings.threads, limits=limits)
    except BaseException:
        indexes.close()
        raise
    log.info("model %s (dim %d), text encoder %s, indexes %s, corpus root %s", bundle.fingerprint[:12],
             bundle.embed_dim, text_encoder.describe(), {m: i.count for m, i in indexes.items()}, corpus_root)
    return Resources(bundle, image_encoder, text_encoder, indexes, corpus_root)
