"""What a frozen vision feature keeps of each object: linear probes on the features inside one grid cell.

Usage: python -m research.cell_probe --data DIR [--n 2000] [--depths 4,8,12] [--out F]

A near twin differs from its scene in one object's class, colour, size, orientation or cell. A vision side
that tells twins apart must see these attributes where the object is. For every object of the first ``n``
scenes, this averages a feature map over the object's grid cell and fits a ridge classifier (one-hot
targets, closed form) from the average to each attribute, on the scenes of the first three quarters,
scored on the rest. The features are:
- ``pixels``: the cell's pixels, resized to 8 x 8 RGB, as the reference a linear read-out of the image has;
- ``dinov2@K``: DINOv2 ViT-S/14's tokens at 224 px after K of its 12 blocks (12: what a locked backbone,
  ``--trainable-blocks 0``, gives the attention pool), each token layer-normalised without weights.
An accuracy near the majority share means the feature has lost the attribute inside the cell, and no pool on
top of a locked backbone can get it back. Train split scenes only: no choice is made on val or test here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from llm2clip.data import Dataset, read_dataset
from llm2clip.data.scene_graph import COLS, ROWS

ATTRIBUTES = ("class", "colour", "size", "orientation")
SIZE = 224
PIXEL_SIDE = 8


def cell_masks(grid: int, size: int = SIZE) -> list[np.ndarray]:
    """For each of the 3 rows (or columns) of the scene grid, which of ``grid`` feature positions have their
    centre inside it."""
    centres = (np.arange(grid) + 0.5) * size / grid
    band = np.minimum((centres / (size / len(ROWS))).astype(int), len(ROWS) - 1)
    return [band == r for r in range(len(ROWS))]


def object_cells(ds: Dataset, n: int) -> list[tuple[int, int, int, dict]]:
    """(scene index, row, column, object) for every object of the first ``n`` scenes."""
    return [(i, ROWS.index(o["row"]), COLS.index(o["col"]), o) for i, it in enumerate(ds.items[:n])
            for o in it.meta["objects"]]


def pooled(maps: np.ndarray, cells: list[tuple[int, int, int, dict]]) -> np.ndarray:
    """Each object's feature: ``maps`` (scenes, grid, grid, C) averaged over the object's cell."""
    masks = cell_masks(maps.shape[1])
    return np.stack([maps[i][np.ix_(masks[r], masks[c])].reshape(-1, maps.shape[-1]).mean(0)
                     for i, r, c, _ in cells])


def ridge_probe(x: np.ndarray, labels: list[str], fit: np.ndarray, alpha: float = 10.0) -> dict[str, float]:
    """Accuracy on ``~fit`` of a ridge classifier fitted on ``fit`` (standardised features, one-hot targets),
    and the majority class's share there."""
    y = np.array(labels)
    values = np.array(sorted(set(labels)))
    onehot = (y[:, None] == values[None]).astype(np.float64)
    mu, sd = x[fit].mean(0), x[fit].std(0) + 1e-6
    z = np.hstack([(x - mu) / sd, np.ones((len(x), 1))])
    w = np.linalg.solve(z[fit].T @ z[fit] + alpha * np.eye(z.shape[1]), z[fit].T @ onehot[fit])
    held = ~fit
    accuracy = float(((z[held] @ w).argmax(1) == onehot[held].argmax(1)).mean())
    return {"accuracy": accuracy, "majority": float(max((y[held] == v).mean() for v in values))}


def pixel_maps(ds: Dataset, n: int) -> np.ndarray:
    """Each scene at PIXEL_SIDE x 3 per side, RGB in [0, 1]: one 8 x 8 patch per cell, (n, 24, 24, 3)."""
    from PIL import Image

    side = PIXEL_SIDE * len(ROWS)
    return np.stack([np.asarray(Image.open(ds.image_path(it)).convert("RGB").resize((side, side), Image.BILINEAR),
                                np.float32) / 255 for it in ds.items[:n]])


def pixel_features(ds: Dataset, n: int, cells: list[tuple[int, int, int, dict]]) -> np.ndarray:
    maps = pixel_maps(ds, n)
    return np.stack([maps[i, r * PIXEL_SIDE:(r + 1) * PIXEL_SIDE, c * PIXEL_SIDE:(c + 1) * PIXEL_SIDE].ravel()
                     for i, r, c, _ in cells])


def dinov2_maps(ds: Dataset, n: int, depths: list[int]) -> dict[int, np.ndarray]:
    """DINOv2's patch tokens after each of ``depths`` blocks, layer-normalised, (n, 16, 16, 384) each."""
    import torch
    from tqdm import tqdm

    from llm2clip.config import VisionCfg
    from llm2clip.vision import Dinov2Backbone, preprocess_for
    from training.images import load_images, normalize

    pre = preprocess_for(VisionCfg(arch="dinov2-s14", image_size=SIZE))
    net = Dinov2Backbone(SIZE, pretrained=True, depth=max(depths)).net.eval()  # no block past the deepest probed
    images = torch.from_numpy(load_images(Dataset(root=ds.root, items=ds.items[:n]), pre, progress=False))
    grid = SIZE // 14
    out = {d: np.zeros((n, grid, grid, 384), np.float32) for d in depths}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for b in tqdm(range(0, n, 32), desc="dinov2 tokens", unit="batch"):
            x = net.forward_prefix(normalize(images[b:b + 32], pre), 0)
            for k, block in enumerate(net.encoder.layer, start=1):
                x = block(x)
                if k in out:
                    t = x[:, 1:].float()
                    t = (t - t.mean(-1, keepdim=True)) / (t.std(-1, keepdim=True) + 1e-6)
                    out[k][b:b + 32] = t.reshape(len(t), grid, grid, -1).numpy()
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, type=Path, help="a train-split scene corpus (`llm2clip data scenes`)")
    ap.add_argument("--n", type=int, default=2000, help="scenes to probe (default 2000)")
    ap.add_argument("--depths", default="4,8,12", help="DINOv2 blocks after which to probe (default 4,8,12)")
    ap.add_argument("--out", type=Path, help="write the accuracies as JSON here")
    args = ap.parse_args(argv)
    ds = read_dataset(args.data)
    n = min(args.n, len(ds))
    cells = object_cells(ds, n)
    fit = np.array([i for i, *_ in cells]) < int(n * 0.75)
    features = {"pixels": pixel_features(ds, n, cells)}
    depths = sorted({int(d) for d in args.depths.split(",") if d})
    features |= {f"dinov2@{d}": pooled(m, cells) for d, m in dinov2_maps(ds, n, depths).items()}
    result = {name: {a: ridge_probe(x, [str(o[a]) for *_, o in cells], fit) for a in ATTRIBUTES}
              for name, x in features.items()}
    result["objects"] = {"fit": int(fit.sum()), "scored": int((~fit).sum())}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    sys.stdout.write("| feature | " + " | ".join(ATTRIBUTES) + " |\n|---|" + "---|" * len(ATTRIBUTES) + "\n")
    for name in features:
        sys.stdout.write(f"| {name} | " + " | ".join(f"{result[name][a]['accuracy']:.3f}" for a in ATTRIBUTES)
                         + " |\n")
    sys.stdout.write("| majority | " + " | ".join(f"{result['pixels'][a]['majority']:.3f}" for a in ATTRIBUTES)
                     + " |\n")


if __name__ == "__main__":
    main()
