"""The one image preprocessing of the project (training, indexing, serving); no torch.

Two steps, so that training can cache the first as uint8 and normalise on the fly:
``fit_image`` (geometry: the bundle's resize mode to size x size RGB) and ``normalize_pixels`` (HWC uint8
-> CHW float32 with the bundle's mean and std). ``preprocess_image`` is both; training's image cache
(``training.clip.load_images``) is ``fit_image``, so a non-square image is trained on exactly as served.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from llm2clip.config import PreprocessCfg

RESIZE_MODES = ("shortest_side_center_crop", "squash")


def fit_image(image: Image.Image, cfg: PreprocessCfg) -> Image.Image:
    """PIL image -> RGB image of cfg.size x cfg.size, by the resize mode of ``cfg``."""
    image = image.convert("RGB")
    size = cfg.size
    if cfg.resize == "squash":
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BICUBIC)
        return image
    if cfg.resize == "shortest_side_center_crop":
        w, h = image.size
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        if (nw, nh) != (w, h):
            image = image.resize((nw, nh), Image.Resampling.BICUBIC)
        left, top = (nw - size) // 2, (nh - size) // 2
        if (left, top, nw, nh) != (0, 0, size, size):
            image = image.crop((left, top, left + size, top + size))
        return image
    raise ValueError(f"unknown resize mode {cfg.resize!r}: choose one of {', '.join(RESIZE_MODES)}")


def normalize_pixels(rgb: np.ndarray, cfg: PreprocessCfg) -> np.ndarray:
    """uint8 RGB (..., H, W, 3) -> float32 (..., 3, H, W), scaled to [0, 1] and normalised by mean and std."""
    pixels = np.asarray(rgb, dtype=np.float32) / np.float32(255.0)
    arr = (pixels - np.asarray(cfg.mean, dtype=np.float32)) / np.asarray(cfg.std, dtype=np.float32)
    return np.ascontiguousarray(np.moveaxis(arr, -1, -3))


def preprocess_image(image: Image.Image, cfg: PreprocessCfg) -> np.ndarray:
    """PIL image -> float32 (3, size, size), normalized. The one preprocessing of the project."""
    return normalize_pixels(np.asarray(fit_image(image, cfg)), cfg)
