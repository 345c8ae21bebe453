"""The one image preprocessing of the project (training, indexing, serving); no torch."""

from __future__ import annotations

import numpy as np
from PIL import Image

from llm2clip.config import PreprocessCfg


def preprocess_image(image: Image.Image, cfg: PreprocessCfg) -> np.ndarray:
    """PIL image -> float32 (3, size, size), normalized. The one preprocessing of the project."""
    image = image.convert("RGB")
    size = cfg.size
    if cfg.resize == "squash":
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    elif cfg.resize == "shortest_side_center_crop":
        w, h = image.size
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        if (nw, nh) != (w, h):
            image = image.resize((nw, nh), Image.Resampling.BICUBIC)
        left, top = (nw - size) // 2, (nh - size) // 2
        image = image.crop((left, top, left + size, top + size))
    else:
        raise ValueError(f"unknown resize mode {cfg.resize!r}")
    pixels = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    arr = (pixels - np.asarray(cfg.mean, dtype=np.float32)) / np.asarray(cfg.std, dtype=np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))
