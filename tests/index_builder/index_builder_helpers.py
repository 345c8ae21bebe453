"""Helpers shared by the index builder's tests: a small corpus of random textures, the rows of an index
bundle's items.sqlite, and a mapper that tells images apart."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from llm2clip.data.dataset import Dataset, Item, read_dataset, write_items

N = 9


def make_dataset(root: Path, n: int = N, first: int = 0) -> Dataset:
    """Items ``s{first}`` .. ``s{first + n - 1}``: random textures with a drawn ellipse, two captions each."""
    rng = np.random.default_rng(7 + first)
    items = []
    for i in range(first, first + n):
        rel = f"img/{i}.png"
        # random textures: a random tiny model still tells them apart, so "own embedding first" is meaningful
        arr = rng.integers(0, 256, (56, 72, 3), dtype=np.uint8)
        im = Image.fromarray(arr)
        ImageDraw.Draw(im).ellipse([4 * (i % 12), 5, 4 * (i % 12) + 20, 30], fill=(250, (20 * i) % 256, 10))
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        im.save(root / rel)
        long = f"scene {i}: " + "a red sneaker above a blue bag, " * (1 + i % 3)
        caps = {"long": long, "short": f"item {i}"}
        items.append(Item(id=f"s{i}", image=rel, captions=caps, meta={"n": i, "tags": ["a", "b"]}))
    write_items(root, items)
    return read_dataset(root)


def db_rows(folder: Path) -> list[tuple]:
    with sqlite3.connect(folder / "items.sqlite") as db:
        sql = "SELECT row, id, uri, caption, caption_key, meta FROM items ORDER BY row"
        return db.execute(sql).fetchall()


class PixelMapper:
    """Embeds preprocessed pixels by a fixed random projection: unlike the tiny random vision tower (whose
    output does not depend on its input), it tells images apart, so a search can find the right row."""

    def __init__(self, size: int, dim: int = 32) -> None:
        self.proj = np.random.default_rng(0).normal(size=(3 * size * size, dim)).astype(np.float32)

    def __call__(self, pixels):
        emb = pixels.reshape(len(pixels), -1) @ self.proj
        return emb / np.linalg.norm(emb, axis=1, keepdims=True)
