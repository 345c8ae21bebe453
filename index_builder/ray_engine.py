"""The Ray Data engine: decoding and encoding run on a Ray cluster, in actors that each hold the bundle's
ONNX encoder; the driver receives the embeddings in dataset order and writes the index bundle with the same
writer as the local build, so both engines give the same bundle.

The driver resolves everything that must be the same on every node before Ray starts: the model bundle's
fingerprint, the text encoder variant (``auto`` is chosen once, here, not per node), the image
preprocessing. Every node must read the model bundle and the corpus at the paths the driver passes (a
shared filesystem, as clip-retrieval assumes for its Spark/pyspark workers).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from index_builder.reader import (
    DECODE_ERROR,
    NO_CAPTION,
    OUTSIDE_ROOT,
    Batch,
    Row,
    Skip,
    SkipItem,
    _long_key,
    caption_keys,
    load_pixels,
)
from llm2clip.bundle import ModelBundle
from llm2clip.data.dataset import Dataset
from llm2clip.errors import LLM2CLIPError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayCfg:
    """Where and how wide. ``address``: None starts a local Ray instance on this machine; ``auto`` joins the
    cluster this machine belongs to; ``ray://HOST:10001`` a remote one through Ray Client. ``actors``: encoder
    actors (default: the cluster's CPUs over ``actor_cpus``); ``actor_cpus``: CPUs each actor reserves, also
    its ONNX Runtime thread count; ``rows_per_task``: rows one actor call encodes."""

    address: str | None = None
    actors: int | None = None
    actor_cpus: int = 1
    rows_per_task: int = 64


def _ray():
    try:
        import ray
    except ImportError:
        raise LLM2CLIPError("the ray engine needs Ray Data: pip install 'llm2clip-retrieval[ray]'") from None
    return ray


class _ImageActor:
    """One ONNX image encoder per actor; a call decodes and encodes one block of image paths."""

    def __init__(self, bundle: str, threads: int, providers: Sequence[str] | None, max_pixels: int) -> None:
        from index_builder.mapper import make_mapper
        from llm2clip.bundle import load_bundle

        mb = load_bundle(bundle, verify=False)
        self.preprocess = mb.preprocess
        self.max_pixels = max_pixels
        self.mapper = make_mapper(mb, "image", threads=threads, providers=providers)

    def __call__(self, block: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        n = len(block["pos"])
        pixels, ok, reasons, details = [], np.zeros(n, bool), [""] * n, [""] * n
        for i, path in enumerate(block["path"]):
            try:
                pixels.append(load_pixels(Path(path), self.preprocess, self.max_pixels))
                ok[i] = True
            except SkipItem as exc:
                reasons[i], details[i] = exc.reason, exc.detail
            except Exception as exc:  # one bad file is one skipped item, as in the local reader
                reasons[i], details[i] = DECODE_ERROR, f"{type(exc).__name__}: {exc}"
        emb = np.zeros((n, self.mapper.dim), np.float32)
        if pixels:
            emb[ok] = self.mapper(np.stack(pixels))
        return {"pos": block["pos"], "emb": emb, "reason": np.array(reasons, dtype=object),
                "detail": np.array(details, dtype=object), "seconds": np.full(n, (time.perf_counter() - start) / n)}


class _TextActor:
    """One text encoder per actor, in the precision the driver chose."""

    def __init__(self, bundle: str, threads: int, providers: Sequence[str] | None, precision: str,
                 max_batch_tokens: int) -> None:
        from index_builder.mapper import make_mapper
        from llm2clip.bundle import load_bundle

        mb = load_bundle(bundle, verify=False)
        self.mapper = make_mapper(mb, "text", threads=threads, providers=providers, precision=precision,
                                  max_batch_tokens=max_batch_tokens)

    def __call__(self, block: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        n = len(block["pos"])
        emb = self.mapper([str(t) for t in block["text"]])
        return {"pos": block["pos"], "emb": emb, "reason": np.array([""] * n, dtype=object),
                "detail": np.array([""] * n, dtype=object), "seconds": np.full(n, (time.perf_counter() - start) / n)}


@dataclass
class _Plan:
    """What the driver sends (one Ray row per entry) and how each answer maps back to the bundle's rows."""

    inputs: list[dict[str, Any]]
    rows: list[Row]  # by pos
    skipped_before: dict[int, list[Skip]]  # skips the driver found itself, reported before the row at pos


def _image_plan(ds: Dataset) -> _Plan:
    inputs, rows, skipped = [], [], {}
    pending: list[Skip] = []
    for item in ds.items:
        try:
            path = ds.image_path(item)
        except LLM2CLIPError:
            pending.append(Skip(item.id, OUTSIDE_ROOT, item.image))
            continue
        skipped[len(rows)], pending = pending, []
        inputs.append({"pos": len(rows), "path": str(path)})
        rows.append(Row(item, _long_key(item)))
    if pending:
        skipped[len(rows)] = pending
    return _Plan(inputs, rows, skipped)


def _text_plan(ds: Dataset, captions: Sequence[str]) -> _Plan:
    inputs, rows, skipped = [], [], {}
    pending: list[Skip] = []
    for item in ds.items:
        keys = caption_keys(item, captions)
        if not keys:
            pending.append(Skip(item.id, NO_CAPTION, f"no caption named {', '.join(captions)}"))
        for key in keys:
            skipped[len(rows)], pending = pending, []
            inputs.append({"pos": len(rows), "text": item.captions[key]})
            rows.append(Row(item, key))
    if pending:
        skipped[len(rows)] = pending
    return _Plan(inputs, rows, skipped)


class RayEncodedReader:
    """A reader for the local runner whose batches are already embeddings: ``Batch(embeddings, rows,
    skipped)`` in dataset order (Ray Data keeps the order), so the runner's mapper is the identity."""

    def __init__(self, ds: Dataset, mb: ModelBundle, modality: str, cfg: Any, ray_cfg: RayCfg,
                 precision: str = "fp32") -> None:
        self.modality = modality
        self.decode_seconds = 0.0  # summed over actors: decode + encode, the work Ray spread out
        self.ray_cfg = ray_cfg
        self.cfg = cfg
        self.bundle_path = str(Path(mb.path).resolve())
        self.precision = precision
        self.plan = _image_plan(ds) if modality == "image" else _text_plan(ds, cfg.captions)
        self.dim = mb.embed_dim
        # what the runner's progress bar counts: items for images (skipped ones too), captions for text
        self.total = len(ds) if modality == "image" else len(self.plan.rows)

    def __len__(self) -> int:
        return self.total

    def _actor(self) -> tuple[type, dict[str, Any]]:
        common = {"bundle": self.bundle_path, "threads": self.ray_cfg.actor_cpus,
                  "providers": list(self.cfg.providers) if self.cfg.providers else None}
        if self.modality == "image":
            return _ImageActor, {**common, "max_pixels": self.cfg.max_pixels}
        return _TextActor, {**common, "precision": self.precision, "max_batch_tokens": self.cfg.max_batch_tokens}

    def _dataset(self):
        ray = _ray()
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # rows come back in dataset order: same bundle as local
        actors = self.ray_cfg.actors or max(1, int(ray.cluster_resources().get("CPU", 1)) // self.ray_cfg.actor_cpus)
        actor, kwargs = self._actor()
        blocks = max(1, -(-len(self.plan.inputs) // self.ray_cfg.rows_per_task))
        return ray.data.from_items(self.plan.inputs, override_num_blocks=blocks).map_batches(
            actor, fn_constructor_kwargs=kwargs, batch_size=self.ray_cfg.rows_per_task, batch_format="numpy",
            concurrency=actors, num_cpus=self.ray_cfg.actor_cpus)

    def __iter__(self) -> Iterator[Batch]:
        if not self.plan.inputs:
            skipped = [s for group in self.plan.skipped_before.values() for s in group]
            if skipped:
                yield Batch(np.zeros((0, self.dim), np.float32), [], skipped)
            return
        expected = 0
        for out in self._dataset().iter_batches(batch_size=None, batch_format="numpy"):
            pos = out["pos"].astype(int)
            if pos[0] != expected or not np.array_equal(pos, np.arange(expected, expected + len(pos))):
                raise LLM2CLIPError("Ray returned rows out of order: the build stopped rather than write a "
                                    "scrambled index; report this with your Ray version")
            expected += len(pos)
            self.decode_seconds += float(out["seconds"].sum())
            yield self._batch(pos, out)
        tail = self.plan.skipped_before.get(len(self.plan.rows), [])
        if tail:
            yield Batch(np.zeros((0, self.dim), np.float32), [], tail)

    def _batch(self, pos: np.ndarray, out: dict[str, np.ndarray]) -> Batch:
        keep = np.array([r == "" for r in out["reason"]], bool)
        skipped = [s for p in pos for s in self.plan.skipped_before.get(int(p), [])]
        skipped += [Skip(self.plan.rows[p].item.id, str(r), str(d))
                    for p, r, d, k in zip(pos, out["reason"], out["detail"], keep, strict=True) if not k]
        rows = [self.plan.rows[p] for p, k in zip(pos, keep, strict=True) if k]
        return Batch(np.asarray(out["emb"], np.float32)[keep], rows, skipped)


class Precomputed:
    """The runner's mapper for a reader that already encoded: embeddings pass through. ``encoder`` answers
    ``describe()`` for the manifest like the local text mapper's encoder."""

    def __init__(self, description: dict[str, Any] | None) -> None:
        self.encoder = _Described(description) if description else None

    def __call__(self, embeddings: np.ndarray) -> np.ndarray:
        return embeddings


@dataclass(frozen=True)
class _Described:
    description: dict[str, Any]

    def describe(self) -> dict[str, Any]:
        return self.description


def stages(mb: ModelBundle, modality: str, cfg: Any) -> tuple[Any, Precomputed]:
    """A Ray build's config and mapper: Ray's actors decode and encode, the runner only collects. The text
    variant is chosen here, once, so that every node encodes with the same one (and the shards' key names it)."""
    from dataclasses import replace

    from llm2clip.encoders.select import choose_text_precision

    if modality == "image":
        return cfg, Precomputed({"engine": "ray", "batch": cfg.ray.rows_per_task})
    precision = choose_text_precision(mb, cfg.precision)
    runtime = mb.text_variants.get(precision, {}).get("runtime", "onnxruntime")
    described = {"backend": runtime, "device": "ray", "precision": precision,
                 "max_batch_tokens": cfg.max_batch_tokens, "batch": cfg.ray.rows_per_task}
    return replace(cfg, precision=precision), Precomputed(described)


@contextmanager
def session(ray_cfg: RayCfg, wanted: bool = True) -> Iterator[None]:
    """Ray connected for the duration (when ``wanted``); shut down after only if this started it."""
    started = wanted and connect(ray_cfg)
    try:
        yield
    finally:
        if started:
            shutdown()


def connect(ray_cfg: RayCfg) -> bool:
    """Start or join Ray; True when this call started it (the caller shuts it down)."""
    ray = _ray()
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    try:
        ray.init(address=ray_cfg.address, **kwargs)
    except ConnectionError as exc:
        raise LLM2CLIPError(f"cannot reach the Ray cluster at {ray_cfg.address}: {exc}; start it with "
                            "`ray start --head` or pass --address of its head") from None
    log.info("ray: %s CPUs in the cluster", ray.cluster_resources().get("CPU"))
    return True


def shutdown() -> None:
    _ray().shutdown()


__all__ = ["Precomputed", "RayCfg", "RayEncodedReader", "connect", "session", "shutdown", "stages"]
