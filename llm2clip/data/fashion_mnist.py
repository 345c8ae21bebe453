"""The Fashion-MNIST photos the scenes are drawn from: the IDX files of the Debian package, and each split's share.

``val`` draws from the last 5,000 images of the Fashion-MNIST train split, ``train`` from the first
55,000, so validation photos are never training photos; ``test`` uses the test split.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path

import numpy as np

from llm2clip.data.scene_graph import CLASSES, ClassPools
from llm2clip.errors import DatasetError

VAL_HOLDOUT = 5000  # last images of the Fashion-MNIST train split, kept for `val`


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


@lru_cache(maxsize=2)
def load_fashion_mnist(part: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) of the Fashion-MNIST ``train`` or ``test`` split."""
    from llm2clip.defaults import fashion_mnist_dir

    prefix = {"train": "train", "test": "t10k"}[part]
    root = fashion_mnist_dir()
    images = _read_idx(root / f"{prefix}-images-idx3-ubyte.gz")
    labels = _read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")
    if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
        raise DatasetError(f"Fashion-MNIST files in {root} are malformed: reinstall dataset-fashion-mnist")
    return images, labels


def fashion_mnist_part(split: str) -> str:
    """The Fashion-MNIST split a scene split draws its photos from."""
    return "test" if split == "test" else "train"


def class_pools(split: str) -> ClassPools:
    """Per class, the indices of the photos (in its Fashion-MNIST part) that scene split ``split`` may use."""
    _, labels = load_fashion_mnist(fashion_mnist_part(split))
    lo, hi = 0, len(labels)
    if split == "train":
        hi -= VAL_HOLDOUT
    elif split == "val":
        lo = hi - VAL_HOLDOUT
    return [np.flatnonzero(labels[lo:hi] == c) + lo for c in range(len(CLASSES))]
