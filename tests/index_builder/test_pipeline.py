"""Mapper, writer and runner with the tiny real model bundle: what lands in the index bundle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from index_builder_helpers import N, PixelMapper, db_rows, make_dataset
from PIL import Image

from index_builder.mapper import make_mapper
from index_builder.reader import CaptionReader, ImageReadCfg, ImageReader, Row
from index_builder.runner import BuildCfg, build_index, build_indexes, run_pipeline
from index_builder.writer import BundleWriter
from llm2clip.bundle import load_bundle
from llm2clip.data.dataset import Item, write_items
from llm2clip.encoders.onnx import load_onnx_encoders
from llm2clip.hashing import sha256_file
from llm2clip.index import load_index


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("corpus") / "ds")


@pytest.fixture(scope="module")
def encoders(tiny_bundle):
    return load_onnx_encoders(tiny_bundle, threads=1)


def test_image_index_bundle(tiny_bundle, corpus, tmp_path):
    out = tmp_path / "image"
    bundle = load_bundle(tiny_bundle)
    mapper = PixelMapper(bundle.preprocess.size)
    manifest = build_index(corpus, tiny_bundle, out, "image", BuildCfg(batch_size=4, workers=2, progress=False),
                           mapper=mapper)
    assert manifest == json.loads((out / "manifest.json").read_text())
    assert manifest["modality"] == "image"
    assert manifest["count"] == N
    assert manifest["dim"] == 32
    assert manifest["factory"] == "Flat"
    assert manifest["metric"] == "inner_product"
    assert manifest["model_fingerprint"] == bundle.fingerprint
    for name in ("index.faiss", "items.sqlite"):
        assert manifest["files"][name] == sha256_file(out / name)
    build = manifest["build"]
    assert build["corpus_root"] == str(corpus.root.resolve())
    assert Path(build["corpus_root"]).is_absolute()
    assert build["dataset"] == str(corpus.root.absolute())
    assert build["batch_size"] == 4 and build["captions"] == ["long"]
    assert build["model_fingerprint"] == bundle.fingerprint
    assert build["skipped"] == {"count": 0, "reasons": {}, "examples": []}
    # the stage timings themselves are checked with a fake clock in test_runner_times_each_stage_with_fakes
    assert set(build["durations_s"]) == {"read_wait", "encode", "write", "decode_workers", "total"}

    rows = db_rows(out)
    assert [(r[0], r[1], r[2], r[3], r[4]) for r in rows] == [
        (k, it.id, it.image, it.long, "long") for k, it in enumerate(corpus.items)
    ]
    assert json.loads(rows[3][5]) == {"n": 3, "tags": ["a", "b"]}

    # each item's own image embedding finds that item first: vectors and records share row order
    from llm2clip.preprocess import preprocess_image

    own = mapper(np.stack([preprocess_image(Image.open(corpus.image_path(it)), bundle.preprocess)
                           for it in corpus.items]))
    index = load_index(out)
    scores, found = index.search(own, k=3)
    assert list(found[:, 0]) == list(range(N))
    assert np.allclose(scores[:, 0], 1.0, atol=1e-4)
    assert float(scores[:, 1].max()) < 0.999
    assert [r.id for r in index.records([int(found[4, 0])])] == ["s4"]
    index.close()


def test_image_index_holds_the_onnx_encoder_embeddings(tiny_bundle, corpus, encoders, tmp_path):
    build_index(corpus, tiny_bundle, tmp_path / "image", "image", BuildCfg(batch_size=4, threads=1, progress=False))
    img, _ = encoders
    expected = img.encode([Image.open(corpus.image_path(it)) for it in corpus.items])
    index = load_index(tmp_path / "image")
    assert np.allclose(index.reconstruct_all(), expected, atol=1e-5)
    index.close()


def test_text_index_with_all_captions(tiny_bundle, corpus, encoders, tmp_path):
    out = tmp_path / "text"
    manifest = build_index(corpus, tiny_bundle, out, "text", BuildCfg(captions=("all",), progress=False))
    assert manifest["modality"] == "text"
    assert manifest["count"] == 2 * N
    assert manifest["build"]["captions"] == ["all"]
    rows = db_rows(out)
    assert [(r[1], r[3], r[4]) for r in rows] == [
        (it.id, it.captions[key], key) for it in corpus.items for key in it.captions
    ]
    assert all(r[2] == f"img/{r[1][1:]}.png" for r in rows)
    _, txt = encoders
    index = load_index(out)
    query = txt.encode([corpus.items[5].short])
    _, found = index.search(query, k=1)
    assert (rows[int(found[0, 0])][1], rows[int(found[0, 0])][4]) == ("s5", "short")
    index.close()


def test_bad_images_are_skipped_and_counted(tiny_bundle, tmp_path):
    root = tmp_path / "ds"
    ds = make_dataset(root, 8)
    good = (root / "img/0.png").read_bytes()
    (root / "img/2.png").write_bytes(np.random.default_rng(1).bytes(512))
    (root / "img/3.png").write_bytes(good[: len(good) // 3])
    (root / "img/5.png").unlink()
    (tmp_path / "outside.png").write_bytes(good)
    items = list(ds.items)
    items[6] = Item(id="s6", image="../outside.png", captions=items[6].captions)
    write_items(root, items)

    manifest = build_index(root, tiny_bundle, tmp_path / "idx", "image", BuildCfg(batch_size=3, progress=False))
    assert manifest["count"] == 4
    assert manifest["build"]["skipped"] == {
        "count": 4,
        "reasons": {"decode_error": 1, "missing": 1, "outside_root": 1, "truncated": 1},
        "examples": ["s2", "s3", "s5", "s6"],
    }
    assert [r[1] for r in db_rows(tmp_path / "idx")] == ["s0", "s1", "s4", "s7"]


def test_every_image_bad_is_an_error_not_an_empty_index(tiny_bundle, tmp_path):
    from llm2clip.errors import BundleError

    root = tmp_path / "ds"
    ds = make_dataset(root, 2)
    for it in ds.items:
        ds.image_path(it).unlink()
    with pytest.raises(BundleError, match="nothing to index"):
        build_index(root, tiny_bundle, tmp_path / "idx", "image", BuildCfg(progress=False))
    assert not (tmp_path / "idx").exists()


def test_build_indexes_writes_both_or_one(tiny_bundle, corpus, tmp_path):
    built = list(build_indexes(corpus, tiny_bundle, tmp_path / "out", BuildCfg(batch_size=8, progress=False)))
    assert [(b.modality, b.path) for b in built] == [("image", tmp_path / "out" / "image"),
                                                     ("text", tmp_path / "out" / "text")]
    for b in built:
        index = load_index(b.path)
        assert index.manifest == b.manifest and index.modality == b.modality
        assert index.count == N  # one row per image; the long captions only, by default
        index.close()
    alone = list(build_indexes(corpus, tiny_bundle, tmp_path / "one", BuildCfg(progress=False), "text"))
    assert [(b.modality, b.path) for b in alone] == [("text", tmp_path / "one")]
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["index.faiss", "items.sqlite", "manifest.json"]


def test_build_indexes_refuses_a_bad_factory_before_embedding(tiny_bundle, corpus, tmp_path):
    from llm2clip.errors import BundleError

    with pytest.raises(BundleError, match="'NoSuchIndex42' is not a FAISS index factory string"):
        list(build_indexes(corpus, tiny_bundle, tmp_path / "out", BuildCfg(factory="NoSuchIndex42")))
    with pytest.raises(BundleError, match="FAISS could not build 'IVF64,Flat' for this corpus: .*clusters"):
        list(build_indexes(corpus, tiny_bundle, tmp_path / "out", BuildCfg(factory="IVF64,Flat", progress=False)))
    out = tmp_path / "out"
    # no index, but the embeddings are kept: the factory is no part of their key, so a rerun with one that fits
    # the corpus embeds nothing again
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["image.partial"]
    manifest = build_index(corpus, tiny_bundle, out / "image", "image", BuildCfg(factory="Flat", progress=False))
    assert manifest["build"]["shards"] == {"size": 4096, "count": 1, "resumed": 1}
    assert manifest["count"] == N and not (out / "image.partial").exists()


def test_mappers_alone(tiny_bundle, corpus, encoders):
    bundle = load_bundle(tiny_bundle)
    image_mapper = make_mapper(bundle, "image", threads=1)
    text_mapper = make_mapper(bundle, "text", threads=1)
    batch = next(iter(ImageReader(corpus, bundle.preprocess, ImageReadCfg(batch_size=3))))
    emb = image_mapper(batch.data)
    assert emb.shape == (3, 32) and np.allclose(emb, encoders[0].encode_pixels(batch.data), atol=1e-5)
    texts = ["a", "a much longer caption about a sneaker " * 4, "b"]
    assert np.allclose(text_mapper(texts), encoders[1].encode(texts), atol=1e-5)
    assert image_mapper(np.zeros((0, 3, 64, 64), np.float32)).shape == (0, 32)
    assert text_mapper([]).shape == (0, 32)
    with pytest.raises(ValueError):
        make_mapper(bundle, "audio")


def test_runner_times_each_stage_with_fakes(corpus, tmp_path):
    """The runner with stages handed in: every batch read, mapped and written, in order, each stage timed
    on a fake clock that only the mapper (1 s a batch) and the writer (0.25 s a batch) move."""

    class Clock:
        now = 0.0

        def __call__(self) -> float:
            return self.now

    clock = Clock()

    def mapper(texts):
        clock.now += 1.0
        return np.eye(4, dtype=np.float32)[[len(t) % 4 for t in texts]]

    class TimedWriter(BundleWriter):
        def add(self, embeddings, rows):
            clock.now += 0.25
            super().add(embeddings, rows)

    writer = TimedWriter(tmp_path / "idx", "text", 4, "f" * 64)
    stats = run_pipeline(CaptionReader(corpus, batch_size=2), mapper, writer, progress=False, clock=clock)
    assert stats.rows == N and stats.batches == 5
    assert (stats.encode_s, stats.write_s, stats.read_wait_s, stats.total_s) == (5.0, 1.25, 0.0, 6.25)
    manifest = writer.finish({"x": 1})
    assert manifest["count"] == N and manifest["build"] == {"x": 1}
    assert [r[1] for r in db_rows(tmp_path / "idx")] == [it.id for it in corpus.items]


def test_writer_records(tmp_path, corpus):
    writer = BundleWriter(tmp_path / "w", "text", 2, "0" * 64)
    it = corpus.items[1]
    writer.add(np.array([[1, 0], [0, 1]], np.float32), [Row(it, "short"), Row(it, "long")])
    writer.add(np.zeros((0, 2), np.float32), [])
    assert len(writer) == 2
    writer.finish({})
    assert [r[1:5] for r in db_rows(tmp_path / "w")] == [
        ("s1", "img/1.png", it.short, "short"),
        ("s1", "img/1.png", it.long, "long"),
    ]
