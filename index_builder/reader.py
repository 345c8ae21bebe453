"""Reader stage: a dataset's items in batches, images decoded and preprocessed ahead of the encoder.

Image decoding runs in a thread pool a bounded number of batches ahead of the consumer (Pillow and NumPy
release the GIL while they decode and resize), so that decode and preprocess overlap encoding. Items whose
image cannot be used are skipped with a reason, never raised: one bad file must not stop a corpus build.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from llm2clip.config import PreprocessCfg
from llm2clip.data.dataset import Dataset, Item
from llm2clip.errors import DatasetError
from llm2clip.preprocess import preprocess_image

log = logging.getLogger(__name__)

# Far above any photo a retrieval corpus holds (~50 MP), far below what exhausts memory when decoded
# (a PNG can declare 100k x 100k in a few hundred bytes).
DEFAULT_MAX_PIXELS = 50_000_000

# reasons an item is skipped (the keys of the manifest's skipped.reasons)
OUTSIDE_ROOT = "outside_root"
MISSING = "missing"
UNREADABLE = "unreadable"
DECODE_ERROR = "decode_error"
TRUNCATED = "truncated"
TOO_LARGE = "too_large"
NO_CAPTION = "no_caption"


class SkipItem(Exception):
    """An item's input cannot be used; ``reason`` is one of the constants above."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Skip:
    id: str
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class Row:
    """One output row: the item it stands for and which of its captions it carries."""

    item: Item
    caption_key: str


class Batch(NamedTuple):
    data: Any  # image modality: float32 (B, 3, S, S) pixels; text modality: list of B captions
    rows: list[Row]  # one per entry of data, same order
    skipped: list[Skip]  # items of this batch that produced no row


def load_pixels(path: Path, cfg: PreprocessCfg, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode and preprocess one image file -> float32 (3, S, S); raises SkipItem when it cannot."""
    try:
        fh = open(path, "rb")  # not a with-block: open errors get their own reasons
    except FileNotFoundError:
        raise SkipItem(MISSING, "no such file") from None
    except OSError as exc:  # a directory, no permission, an I/O error
        raise SkipItem(UNREADABLE, type(exc).__name__) from None
    with fh:
        try:
            image = Image.open(fh)
        except Image.DecompressionBombError as exc:
            raise SkipItem(TOO_LARGE, str(exc)) from None
        except UnidentifiedImageError:
            raise SkipItem(DECODE_ERROR, "not an image file Pillow can read") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise SkipItem(DECODE_ERROR, f"{type(exc).__name__}: {exc}") from None
        with image:
            # the header is read, the pixels are not: refuse before allocating them
            w, h = image.size
            if w * h > max_pixels:
                raise SkipItem(TOO_LARGE, f"{w}x{h} exceeds {max_pixels} pixels")
            try:
                image.load()
            except OSError as exc:
                msg = str(exc)
                if "truncated" in msg or "broken data stream" in msg:
                    raise SkipItem(TRUNCATED, msg) from None
                raise SkipItem(DECODE_ERROR, f"{type(exc).__name__}: {msg}") from None
            except (SyntaxError, ValueError, EOFError, MemoryError) as exc:
                raise SkipItem(DECODE_ERROR, f"{type(exc).__name__}: {exc}") from None
            try:
                return preprocess_image(image, cfg)
            except (OSError, ValueError) as exc:  # e.g. a mode that does not convert to RGB
                raise SkipItem(DECODE_ERROR, f"{type(exc).__name__}: {exc}") from None


def _chunks(seq: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(seq), size):
        yield seq[start : start + size]


@dataclass(frozen=True)
class ImageReadCfg:
    """``batch_size`` images a batch, decoded by ``workers`` threads ``prefetch`` batches ahead of the
    consumer; images over ``max_pixels`` are skipped."""

    batch_size: int = 32
    workers: int = 2
    prefetch: int = 2
    max_pixels: int = DEFAULT_MAX_PIXELS


class ImageReader:
    """Iterates ``Batch(pixels, rows, skipped)`` over a dataset's images, in dataset order.

    ``prefetch`` batches are decoded while the consumer holds the current one, so at most
    ``(prefetch + 1) * batch_size`` decoded images are in memory. ``loader`` (path -> pixels, raising
    SkipItem) replaces the file decoder, for tests and other storage.
    """

    modality = "image"

    def __init__(self, dataset: Dataset, cfg: PreprocessCfg, reading: ImageReadCfg = ImageReadCfg(),
                 loader: Callable[[Path], np.ndarray] | None = None) -> None:
        if reading.batch_size < 1 or reading.workers < 1 or reading.prefetch < 1:
            raise ValueError("batch_size, workers and prefetch must be at least 1")
        self.dataset = dataset
        self.cfg = cfg
        self.reading = reading
        self.loader = loader or (lambda path: load_pixels(path, cfg, reading.max_pixels))
        self.decode_seconds = 0.0  # summed over workers: compare with the runner's read_wait
        self.clock: Callable[[], float] = time.perf_counter  # what decode_seconds is measured with
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Rows at most (items whose image is skipped produce none)."""
        return len(self.dataset)

    def _load(self, item: Item) -> np.ndarray | Skip:
        start = self.clock()
        try:
            try:
                path = self.dataset.image_path(item)
            except DatasetError:
                return Skip(item.id, OUTSIDE_ROOT, item.image)
            try:
                return self.loader(path)
            except SkipItem as exc:
                return Skip(item.id, exc.reason, exc.detail)
            except Exception as exc:  # an unforeseen decoder failure is one bad item, not a failed build
                return Skip(item.id, DECODE_ERROR, f"{type(exc).__name__}: {exc}")
        finally:
            elapsed = self.clock() - start
            with self._lock:
                self.decode_seconds += elapsed

    def _assemble(self, futures: list[tuple[Item, Future]]) -> Batch:
        arrays: list[np.ndarray] = []
        rows: list[Row] = []
        skipped: list[Skip] = []
        for item, fut in futures:
            out = fut.result()
            if isinstance(out, Skip):
                skipped.append(out)
            else:
                arrays.append(out)
                rows.append(Row(item, _long_key(item)))
        size = self.cfg.size
        pixels = np.stack(arrays) if arrays else np.zeros((0, 3, size, size), np.float32)
        return Batch(pixels, rows, skipped)

    def __iter__(self) -> Iterator[Batch]:
        chunks = _chunks(self.dataset.items, self.reading.batch_size)
        pending: deque[list[tuple[Item, Future]]] = deque()
        pool = ThreadPoolExecutor(max_workers=self.reading.workers, thread_name_prefix="index-reader")

        def fill() -> None:
            while len(pending) < self.reading.prefetch:
                chunk = next(chunks, None)
                if chunk is None:
                    return
                pending.append([(item, pool.submit(self._load, item)) for item in chunk])

        try:
            fill()
            while pending:
                current = pending.popleft()
                # submit the next batch before waiting on this one, so the pool never idles while the
                # consumer encodes
                fill()
                yield self._assemble(current)
        finally:
            # an abandoned iteration (consumer error, early break) must not leave decodes running
            for futures in pending:
                for _, fut in futures:
                    fut.cancel()
            pool.shutdown(wait=True, cancel_futures=True)


def _long_key(item: Item) -> str:
    return "long" if "long" in item.captions else next(iter(item.captions))


def _short_key(item: Item) -> str:
    return "short" if "short" in item.captions else list(item.captions)[-1]


def caption_keys(item: Item, captions: Sequence[str]) -> list[str]:
    """Which of an item's captions to embed, in a stable order, without repeats.

    ``"all"`` means every caption of the item; ``"long"`` / ``"short"`` fall back as ``Item.long`` /
    ``Item.short`` do (first / last caption) for datasets whose captions carry no names; any other
    name is taken only where the item has it.
    """
    keys: list[str] = []
    for want in captions:
        if want == "all":
            found = list(item.captions)
        elif want == "long":
            found = [_long_key(item)]
        elif want == "short":
            found = [_short_key(item)]
        else:
            found = [want] if want in item.captions else []
        keys.extend(k for k in found if k not in keys)
    return keys


class CaptionReader:
    """Iterates ``Batch(texts, rows, skipped)``: one row per selected caption, ``batch_size`` rows a batch."""

    modality = "text"

    def __init__(self, dataset: Dataset, captions: Sequence[str] = ("long",), batch_size: int = 32) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if isinstance(captions, str):
            captions = (captions,)
        if not captions:
            raise ValueError("captions must name at least one caption (or 'all')")
        self.dataset = dataset
        self.captions = tuple(captions)
        self.batch_size = batch_size
        self.decode_seconds = 0.0

    def __len__(self) -> int:
        return sum(len(caption_keys(item, self.captions)) for item in self.dataset.items)

    def __iter__(self) -> Iterator[Batch]:
        texts: list[str] = []
        rows: list[Row] = []
        skipped: list[Skip] = []
        for item in self.dataset.items:
            keys = caption_keys(item, self.captions)
            if not keys:
                skipped.append(Skip(item.id, NO_CAPTION, f"no caption named {', '.join(self.captions)}"))
            for key in keys:
                texts.append(item.captions[key])
                rows.append(Row(item, key))
                if len(rows) == self.batch_size:
                    yield Batch(texts, rows, skipped)
                    texts, rows, skipped = [], [], []
        if rows or skipped:
            yield Batch(texts, rows, skipped)


__all__ = [
    "Batch",
    "CaptionReader",
    "DEFAULT_MAX_PIXELS",
    "ImageReadCfg",
    "ImageReader",
    "Row",
    "Skip",
    "SkipItem",
    "caption_keys",
    "load_pixels",
]
