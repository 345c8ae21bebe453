"""The Ray Data engine on a local Ray cluster (`ray.init(num_cpus=2)`): the bundle it writes holds the same
rows, in the same order, with the same vectors as the local engine's, skipped items included."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import faiss
import numpy as np
import pytest
import ray  # the ray extra, which scripts/setup.sh installs: a missing one fails rather than skips
from index_builder_helpers import make_dataset

from index_builder.ray_engine import RayCfg
from index_builder.runner import BuildCfg, build_indexes
from llm2clip.data.dataset import Item, read_dataset, write_items

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus_with_bad_items(tmp_path_factory) -> Path:
    """13 good images with long and short captions, one corrupt file, one path outside the corpus."""
    root = tmp_path_factory.mktemp("ray") / "ds"
    ds = make_dataset(root, 13)
    (root / "img" / "bad.png").write_bytes(b"not a png")
    items = [*ds.items[:5], Item(id="bad", image="img/bad.png", captions={"long": "a broken file"}),
             *ds.items[5:9], Item(id="escape", image="../outside.png", captions={"long": "outside"}),
             *ds.items[9:]]
    write_items(root, items)
    return root


def contents(folder: Path) -> tuple[list[tuple], np.ndarray]:
    db = sqlite3.connect(folder / "items.sqlite")
    rows = db.execute("SELECT row, id, uri, caption, caption_key, meta FROM items ORDER BY row").fetchall()
    db.close()
    index = faiss.read_index(str(folder / "index.faiss"))
    return rows, index.reconstruct_n(0, index.ntotal)


def test_ray_build_equals_the_local_build(cluster, tiny_bundle, corpus_with_bad_items, tmp_path):
    ds = read_dataset(corpus_with_bad_items)
    local = {b.modality: b for b in build_indexes(ds, tiny_bundle, tmp_path / "local",
                                                   BuildCfg(progress=False, captions=("all",), threads=1))}
    # five items a shard: several Ray jobs, collected shard by shard as a local build does
    cfg = BuildCfg(progress=False, captions=("all",), engine="ray", shard_size=5,
                   ray=RayCfg(actors=2, rows_per_task=4))
    distributed = {b.modality: b for b in build_indexes(ds, tiny_bundle, tmp_path / "ray", cfg)}
    for modality in ("image", "text"):
        rows_l, vecs_l = contents(local[modality].path)
        rows_r, vecs_r = contents(distributed[modality].path)
        assert rows_r == rows_l and len(rows_l) == (13 if modality == "image" else 2 * 13 + 2)
        np.testing.assert_allclose(vecs_r, vecs_l, atol=1e-6)
        m_l, m_r = local[modality].manifest, distributed[modality].manifest
        assert m_r["build"]["skipped"] == m_l["build"]["skipped"]
        assert (m_r["count"], m_r["factory"], m_r["model_fingerprint"]) == (m_l["count"], m_l["factory"],
                                                                             m_l["model_fingerprint"])
        assert m_r["build"]["engine"] == "ray" and m_l["build"]["engine"] == "local"
        assert m_r["build"]["shards"]["count"] == 3
    assert local["image"].manifest["build"]["skipped"]["reasons"] == {"decode_error": 1, "outside_root": 1}
    assert distributed["text"].manifest["build"]["text_encoder"]["precision"] == \
        local["text"].manifest["build"]["text_encoder"]["precision"]


def test_cli_ray_engine(cluster, tiny_bundle, corpus_with_bad_items, tmp_path, capsys):
    from llm2clip_cli.main import main

    code = main(["index", "build", "--model", str(tiny_bundle), "--data", str(corpus_with_bad_items),
                 "--out", str(tmp_path / "out"), "--modality", "image", "--engine", "ray", "--actors", "1",
                 "--no-progress"])
    assert code == 0 and "image index: 13 rows" in capsys.readouterr().out


def test_ray_options_need_the_ray_engine(tiny_bundle, corpus_with_bad_items, tmp_path, capsys):
    from llm2clip_cli.main import main

    code = main(["index", "build", "--model", str(tiny_bundle), "--data", str(corpus_with_bad_items),
                 "--out", str(tmp_path / "out"), "--address", "auto"])
    assert code == 2 and "--engine ray only" in capsys.readouterr().err
