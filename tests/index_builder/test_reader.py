"""The reader alone: batches in order, prefetch that runs ahead (bounded), bad images skipped by reason."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from index_builder.reader import (
    DECODE_ERROR,
    MISSING,
    OUTSIDE_ROOT,
    TOO_LARGE,
    TRUNCATED,
    UNREADABLE,
    CaptionReader,
    ImageReadCfg,
    ImageReader,
    SkipItem,
    caption_keys,
    load_pixels,
)
from llm2clip.config import PreprocessCfg
from llm2clip.data.dataset import Item, read_dataset, write_items

CFG = PreprocessCfg(size=32)


def draw(path: Path, i: int, size: tuple[int, int] = (48, 40)) -> None:
    im = Image.new("RGB", size, ((37 * i) % 256, (91 * i) % 256, (53 * i + 40) % 256))
    ImageDraw.Draw(im).rectangle([i % 20, 3, i % 20 + 15, 25], fill=(255 - 20 * (i % 10), 10, 200))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def make_dataset(root: Path, n: int, captions=None):
    items = []
    for i in range(n):
        rel = f"images/{i:03d}.png"
        draw(root / rel, i)
        caps = captions(i) if captions else {"long": f"long caption {i} " * 5, "short": f"short {i}"}
        items.append(Item(id=f"it{i:03d}", image=rel, captions=caps, meta={"i": i}))
    write_items(root, items)
    return read_dataset(root)


def test_batches_in_dataset_order_with_right_pixels(tmp_path):
    ds = make_dataset(tmp_path / "ds", 11)
    reader = ImageReader(ds, CFG, ImageReadCfg(batch_size=4, workers=3, prefetch=2))
    batches = list(reader)
    assert [len(b.rows) for b in batches] == [4, 4, 3]
    assert [r.item.id for b in batches for r in b.rows] == [it.id for it in ds.items]
    assert all(r.caption_key == "long" for b in batches for r in b.rows)
    pixels = np.concatenate([b.data for b in batches])
    assert pixels.dtype == np.float32 and pixels.shape == (11, 3, 32, 32)
    # row k holds item k's image, not a neighbour's (out-of-order completion must not reorder rows)
    for k in (0, 5, 10):
        assert np.allclose(pixels[k], load_pixels(ds.image_path(ds.items[k]), CFG))
    # a second pass works: the pool belongs to one iteration
    assert sum(len(b.rows) for b in reader) == 11


def test_decode_seconds_sum_the_time_spent_in_each_load(tmp_path):
    ds = make_dataset(tmp_path / "ds", 5)
    ticks = iter(range(0, 100, 2))  # each load starts and ends on one tick: 2 s apart
    reader = ImageReader(ds, CFG, ImageReadCfg(batch_size=2, workers=1, prefetch=1))
    reader.clock = lambda: float(next(ticks))
    assert sum(len(b.rows) for b in reader) == 5
    assert reader.decode_seconds == 5 * 2.0


def test_prefetch_runs_ahead_of_the_consumer_and_is_bounded(tmp_path):
    ds = make_dataset(tmp_path / "ds", 12)
    order = {it.id: k for k, it in enumerate(ds.items)}
    by_path = {ds.image_path(it): it.id for it in ds.items}
    loaded: list[str] = []
    lock = threading.Lock()
    second_batch_started = threading.Event()

    def loader(path: Path) -> np.ndarray:
        item_id = by_path[path]
        with lock:
            loaded.append(item_id)
        if order[item_id] >= 2:  # batch_size 2: item 2 opens the second batch
            second_batch_started.set()
        return np.full((3, 32, 32), order[item_id], np.float32)

    reader = ImageReader(ds, CFG, ImageReadCfg(batch_size=2, workers=2, prefetch=2), loader=loader)
    it = iter(reader)
    first = next(it)
    assert [r.item.id for r in first.rows] == ["it000", "it001"]
    # the consumer holds batch 0 and has not asked for more: batch 1 must already be decoding
    assert second_batch_started.wait(timeout=5), "the reader did not decode ahead of the consumer"
    time.sleep(0.2)
    with lock:
        ahead = max(order[i] for i in loaded)
    # prefetch=2 keeps batches 1 and 2 in flight, never batch 3 (items 6, 7) while batch 0 is held
    assert ahead <= 5
    rest = list(it)
    ids = [r.item.id for r in first.rows] + [r.item.id for b in rest for r in b.rows]
    assert ids == [it.id for it in ds.items]
    assert [float(b.data[0, 0, 0, 0]) for b in [first, *rest]] == [0, 2, 4, 6, 8, 10]


def test_abandoned_iteration_stops_the_pool(tmp_path):
    ds = make_dataset(tmp_path / "ds", 20)
    before = threading.active_count()
    it = iter(ImageReader(ds, CFG, ImageReadCfg(batch_size=2, workers=2, prefetch=2)))
    next(it)
    it.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("index-reader")]
    assert threading.active_count() <= before


def test_bad_images_are_skipped_with_a_reason(tmp_path):
    root = tmp_path / "ds"
    ds = make_dataset(root, 8)
    good = (root / "images/000.png").read_bytes()
    (root / "images/003.png").write_bytes(np.random.default_rng(0).bytes(700))  # random bytes
    (root / "images/004.png").write_bytes(good[: len(good) // 2])  # header intact, pixels cut
    (root / "images/005.png").unlink()
    (root / "images/006.png").unlink()
    (root / "images/006.png").mkdir()  # a path that exists but is not a readable file
    items = list(ds.items)
    outside = tmp_path / "secret.png"
    draw(outside, 1)
    items[7] = Item(id=items[7].id, image="../secret.png", captions=items[7].captions)
    write_items(root, items)
    ds = read_dataset(root)

    batches = list(ImageReader(ds, CFG, ImageReadCfg(batch_size=3, workers=2)))
    kept = [r.item.id for b in batches for r in b.rows]
    skipped = {s.id: s.reason for b in batches for s in b.skipped}
    assert kept == ["it000", "it001", "it002"]
    assert skipped == {"it003": DECODE_ERROR, "it004": TRUNCATED, "it005": MISSING,
                       "it006": UNREADABLE, "it007": OUTSIDE_ROOT}
    assert sum(len(b.data) for b in batches) == 3
    # a batch whose every image is bad is still yielded, with an empty pixel array, so its skips count
    assert [b.data.shape for b in batches][2] == (0, 3, 32, 32)


def test_decompression_bombs_are_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    # 1-bit PNG, 9k x 9k pixels: a few kB on disk, ~1 GB as float32 RGB; under Pillow's own limit
    Image.new("1", (9_000, 9_000)).save(path)
    assert path.stat().st_size < 100_000
    with pytest.raises(SkipItem) as err:
        load_pixels(path, CFG)
    assert err.value.reason == TOO_LARGE
    # beyond twice Pillow's limit Pillow itself refuses to open it: still a skip, not a crash
    huge = tmp_path / "huge.png"
    Image.new("1", (14_000, 14_000)).save(huge)
    with pytest.raises(SkipItem) as err:
        load_pixels(huge, CFG)
    assert err.value.reason == TOO_LARGE
    # the cap is the caller's
    small = tmp_path / "small.png"
    draw(small, 2, size=(100, 100))
    with pytest.raises(SkipItem, match=TOO_LARGE):
        load_pixels(small, CFG, max_pixels=9_999)
    assert load_pixels(small, CFG, max_pixels=10_000).shape == (3, 32, 32)


def test_caption_reader_selects_captions(tmp_path):
    def caps(i):
        return {"long": f"L{i}", "short": f"S{i}", "alt": f"A{i}"} if i != 2 else {"long": "L2"}

    ds = make_dataset(tmp_path / "ds", 4, captions=caps)
    rows = [(r.item.id, r.caption_key, t) for b in CaptionReader(ds, ("all",), batch_size=3)
            for r, t in zip(b.rows, b.data, strict=True)]
    assert len(rows) == 3 + 3 + 1 + 3
    # every caption of an item, in the order the dataset stores them
    assert rows[:4] == [("it000", "alt", "A0"), ("it000", "long", "L0"), ("it000", "short", "S0"),
                        ("it001", "alt", "A1")]
    assert [len(b.rows) for b in CaptionReader(ds, "all", batch_size=3)] == [3, 3, 3, 1]

    longs = [t for b in CaptionReader(ds) for t in b.data]
    assert longs == ["L0", "L1", "L2", "L3"]
    # an item without a "short" caption falls back as Item.short does (its last caption)
    assert [t for b in CaptionReader(ds, ("short",)) for t in b.data] == ["S0", "S1", "L2", "S3"]
    # a named caption an item lacks skips that item with a reason
    batches = list(CaptionReader(ds, ("alt",), batch_size=10))
    assert [t for b in batches for t in b.data] == ["A0", "A1", "A3"]
    assert [(s.id, s.reason) for b in batches for s in b.skipped] == [("it002", "no_caption")]


def test_caption_keys_for_unnamed_captions():
    item = Item(id="x", image="x.png", captions={"0": "first", "1": "second"})
    assert caption_keys(item, ("long",)) == ["0"]
    assert caption_keys(item, ("short",)) == ["1"]
    assert caption_keys(item, ("long", "all")) == ["0", "1"]
