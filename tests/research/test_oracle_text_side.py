"""The oracle text side of research.oracle_text_side: every binding explicit, readable as caption embeddings."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from llm2clip.data import generate_scenes, near_twin_graph
from research import oracle_text_side as oracle
from training.embed import CaptionEmbeddings


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return generate_scenes(tmp_path_factory.mktemp("scenes") / "train", 12, "train", 0, progress=False)


def test_a_twin_differs_in_the_long_vector_only_by_its_binding(scenes):
    seen = set()
    for i, item in enumerate(scenes.items):
        twin = near_twin_graph(item.meta, seed=i)
        changed = {k for o, p in zip(item.meta["objects"], twin["objects"], strict=True) for k in o if o[k] != p[k]}
        seen |= changed
        a_long, b_long = oracle.oracle_vector(item.meta, True), oracle.oracle_vector(twin, True)
        assert np.isclose(np.linalg.norm(a_long), 1) and a_long.shape == (oracle.DIM,)
        assert not np.allclose(a_long, b_long), changed  # one attribute of one object: the long vector sees it
        a_short, b_short = oracle.oracle_vector(item.meta, False), oracle.oracle_vector(twin, False)
        assert np.count_nonzero(a_short[len(oracle.SHORT):]) == 0  # nothing past what a short caption names
        # the short caption names count, classes and background: only a class twin changes it
        assert np.allclose(a_short, b_short) == ("class" not in changed)
    assert len(seen) >= 3  # the twins cover several attributes


def test_bound_only_keeps_values_inside_their_bindings(scenes):
    meta = scenes.items[0].meta
    full, bound = oracle.oracle_vector(meta, True), oracle.oracle_vector(meta, True, presence=False)
    unbound = [i for name, i in oracle.LONG.items() if "|" not in name and name.split(":")[0] in oracle.BOUND]
    assert np.count_nonzero(full[unbound]) > 0 and np.count_nonzero(bound[unbound]) == 0
    binding = [i for name, i in oracle.LONG.items() if "|" in name]
    assert np.array_equal(full[binding] > 0, bound[binding] > 0)


def test_embeddings_folder_reads_as_caption_embeddings(scenes, tmp_path):
    folder = oracle.write_embeddings(scenes, tmp_path / "emb")
    caps = CaptionEmbeddings(folder)
    assert caps.dim == oracle.DIM and len(caps.embeddings) == 2 * len(scenes)
    item = scenes.items[3]
    assert np.allclose(caps.get(item.id, "long").numpy(), oracle.oracle_vector(item.meta, True))
    assert sorted(caps.keys_for(item.id)) == ["long", "short"]


@pytest.mark.slow
def test_a_run_on_val_with_a_locked_dinov2_reads_its_tokens_from_the_cache(tmp_path):
    import json

    from training.checkpoint import load_checkpoint

    repro = tmp_path / "repro"
    generate_scenes(repro / "data" / "train", 64, "train", 0, progress=False)  # one batch of the repro preset
    val = generate_scenes(repro / "data" / "val", 8, "val", 1, progress=False)
    cache = tmp_path / "cache"
    oracle.main(["--repro", str(repro), "--out", str(tmp_path / "out"), "--split", "val", "--epochs", "1",
                 "--vision-arch", "dinov2-s14", "--image-size", "28", "--trainable-blocks", "0",
                 "--vision-depth", "6", "--caption-keys", "long", "--token-cache", str(cache)])
    result = json.loads((tmp_path / "out" / "oracle.json").read_text())
    assert result["split"] == "val" and result["val_scenes"] == len(val) and "test_scenes" not in result
    assert result["near_twin"]["n_pairs"] == len(val)  # each scene against its twin
    assert result["vision"] == {"arch": "dinov2-s14", "image_size": 28, "trainable_blocks": 0, "depth": 6,
                                "pool_heads": 4, "pool_queries": 1}
    assert result["init_logit_scale"] == pytest.approx(1 / 0.07, abs=1e-3)  # CLIP's, unless --logit-scale
    assert result["command"].endswith("--epochs 1 --split val --vision-arch dinov2-s14 --image-size 28 "
                                      "--trainable-blocks 0 --vision-depth 6 --caption-keys long")
    assert result["caption_keys"] == ["long"]  # stage 2 drew long captions only
    assert [p.suffix for p in cache.iterdir()] == [".npy"]  # the locked tower's tokens, built once
    model, _ = load_checkpoint(tmp_path / "out" / "ckpt")
    assert model.cfg.vision.arch == "dinov2-s14" and model.cfg.vision.trainable_blocks == 0
    assert model.cfg.vision.depth == 6 and model.visual.backbone.num_blocks == 6  # read at block 6
    per_query = result["per_query"]  # what research.compare_oracles tests on, consistent with the totals
    assert len(per_query["t2i_r1"]) == len(val) and len(per_query["twin_t2i"]) == len(per_query["twin_pairs"])
    assert np.mean(per_query["twin_t2i"]) == pytest.approx(result["near_twin"]["long"]["t2i"])
    assert np.mean(per_query["i2t_r1"]) == pytest.approx(result["long"]["i2t_r1"])


@pytest.mark.parametrize("option", [["--logit-scale", "0"], ["--logit-scale", "x"], ["--image-size", "0"],
                                    ["--trainable-blocks", "-1"], ["--split", "train"],
                                    ["--vision-depth", "6", "--vision-arch", "efficientnet-lite0"],
                                    ["--vision-depth", "13", "--vision-arch", "dinov2-s14"], ["--caption-keys", ","],
                                    ["--backbone-lr", "0"], ["--backbone-lr", "nan"]])
def test_bad_options_are_refused_before_any_work(tmp_path, option, capsys):
    with pytest.raises(SystemExit) as exc:
        oracle.main(["--repro", str(tmp_path / "none"), "--out", str(tmp_path / "out"), *option])
    assert exc.value.code == 2 and option[0] in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_vision_side_is_the_repros_unless_an_option_replaces_it():
    from research.repro_config import ReproCfg, vision_cfg

    cfg = ReproCfg()
    parse = oracle._parser().parse_args
    assert oracle._vision(parse(["--repro", "r", "--out", "o"]), cfg) == vision_cfg(cfg)
    # another backbone brings none of the repro tower's settings, only the options given with it
    other = "dinov2-s14" if cfg.vision_arch != "dinov2-s14" else "efficientnet-lite0"
    v = oracle._vision(parse(["--repro", "r", "--out", "o", "--vision-arch", other, "--pool-queries", "3"]), cfg)
    assert (v.arch, v.depth, v.trainable_blocks, v.pool_queries) == (other, None, None, 3)
    locked = replace(cfg, vision_arch="dinov2-s14", trainable_blocks=0, vision_depth=8, image_size=224)
    v = oracle._vision(parse(["--repro", "r", "--out", "o", "--vision-depth", "6"]), locked)
    assert (v.arch, v.depth, v.trainable_blocks, v.image_size) == ("dinov2-s14", 6, 0, 224)


def test_the_stage2_recipe_is_the_repros_unless_an_option_replaces_it():
    from research.repro_config import ReproCfg, stage2_cfg

    base = stage2_cfg(ReproCfg(), 4000)
    parse = oracle._parser().parse_args
    assert oracle.train_cfg(parse(["--repro", "r", "--out", "o"]), base) == base
    got = oracle.train_cfg(parse(["--repro", "r", "--out", "o", "--backbone-lr", "1e-5", "--seed", "2",
                                  "--caption-keys", "long"]), base)
    assert (got.backbone_lr, got.seed, got.caption_keys) == (1e-5, 2, ("long",))
    assert replace(got, backbone_lr=base.backbone_lr, seed=base.seed, caption_keys=base.caption_keys) == base
