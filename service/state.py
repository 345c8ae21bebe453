"""What the service holds while it runs: the model bundle, its encoders, the indexes and the batchers."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llm2clip.bundle import ModelBundle, load_bundle
from llm2clip.encoders import BatchLimits, ImageEncoder, TextEncoder, load_encoders
from llm2clip.errors import BundleError, SettingError
from llm2clip.index import MODALITIES, IndexBundle, load_index
from service.batching import Batcher, TextEmbedding, TokenizedText
from service.cache import LRUCache
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger(__name__)

def index_setting(modality: str) -> str:
    """The environment variable that names the index of ``modality``."""
    return f"LLM2CLIP_{modality.upper()}_INDEX"


@dataclass
class Resources:
    """Loaded once per process; the CLI loads them before binding the server so errors come first."""

    bundle: ModelBundle
    image_encoder: ImageEncoder
    text_encoder: TextEncoder
    indexes: dict[str, IndexBundle] = field(default_factory=dict)  # by modality: "image", "text"
    corpus_root: Path | None = None

    def warmup(self) -> None:
        self.image_encoder.warmup()
        self.text_encoder.warmup()

    def close(self) -> None:
        for index in self.indexes.values():
            index.close()


@dataclass
class Runtime:
    """Everything a request needs, present only between startup and shutdown."""

    settings: Settings
    metrics: Metrics
    resources: Resources
    text_batcher: Batcher[TokenizedText, TextEmbedding]
    image_batcher: Batcher[np.ndarray, np.ndarray]
    text_cache: LRUCache[TextEmbedding]

    @property
    def alive(self) -> bool:
        return self.text_batcher.alive and self.image_batcher.alive


@dataclass
class ServiceState:
    settings: Settings
    metrics: Metrics
    preloaded: Resources | None = None  # handed in by the caller, who then owns (closes) them
    runtime: Runtime | None = None


def load_indexes(settings: Settings, bundle: ModelBundle) -> dict[str, IndexBundle]:
    indexes: dict[str, IndexBundle] = {}
    try:
        for modality, path in (("image", settings.image_index), ("text", settings.text_index)):
            if path is None:
                continue
            index = load_index(path, verify=settings.verify_bundles, device=settings.index_device)
            indexes[modality] = index
            if index.modality != modality:
                raise SettingError(
                    f"{path} is a {index.modality} index, but it was given as the {modality} index: "
                    f"pass it as {index_setting(index.modality)}", f"{index.modality}_index")
            index.check_model(bundle.fingerprint)
            if index.dim != bundle.embed_dim:
                raise BundleError(f"index {path} has dim {index.dim}, the model {bundle.embed_dim}: "
                                  "rebuild the index")
    except BaseException:
        for index in indexes.values():
            index.close()
        raise
    return indexes


def find_corpus_root(settings: Settings, indexes: dict[str, IndexBundle]) -> Path | None:
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
        for index in indexes.values():
            index.close()
        raise
    log.info("model %s (dim %d), text encoder %s, indexes %s, corpus root %s", bundle.fingerprint[:12],
             bundle.embed_dim, text_encoder.describe(), {m: i.count for m, i in indexes.items()}, corpus_root)
    return Resources(bundle, image_encoder, text_encoder, indexes, corpus_root)
