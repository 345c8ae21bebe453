"""Stage 2's images: decoded and fitted once into a uint8 array, normalised per batch.

There is no augmentation, because flips and crops would contradict captions that name orientation and position.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from llm2clip.config import PreprocessCfg
from llm2clip.data import Dataset
from llm2clip.errors import DatasetError
from llm2clip.preprocess import fit_image


def load_images(dataset: Dataset, preprocess: PreprocessCfg, progress: bool = True) -> np.ndarray:
    """Every training image fitted to the model's input by the bundle's own geometry (``fit_image``: the
    resize mode the service applies), uint8 (N, size, size, 3); ``normalize`` finishes the preprocessing."""
    size = preprocess.size
    out = np.zeros((len(dataset), size, size, 3), np.uint8)
    for i, item in enumerate(tqdm(dataset.items, desc="load images", unit="img", disable=not progress)):
        try:
            with Image.open(dataset.image_path(item)) as im:
                out[i] = np.asarray(fit_image(im, preprocess))
        except (OSError, ValueError) as exc:
            raise DatasetError(f"cannot read the image of item {item.id!r} ({exc.__class__.__name__}): fix or "
                               "remove it from items.jsonl") from None
    return out


def normalize(batch_uint8: torch.Tensor, cfg: PreprocessCfg) -> torch.Tensor:
    """uint8 NHWC -> normalised float NCHW (channels_last): ``llm2clip.preprocess.normalize_pixels`` in torch."""
    x = batch_uint8.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)
