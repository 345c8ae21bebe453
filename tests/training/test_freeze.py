"""``VisionCfg.trainable_blocks``: a locked (LiT) or last-blocks-only backbone in stage 2, and the DINOv2
backbone's layer ids for the layer-wise learning rates."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from tiny_models import tiny_cfg

from llm2clip.errors import ConfigError
from llm2clip.model import LLM2CLIP
from llm2clip.vision import preprocess_for
from training.clip_recipe import clip_loss, layer_ids, param_groups
from training.config import EmbedCfg, ModelShape, TrainCfg


def _model(arch: str, size: int, trainable_blocks: int | None, pretrained: bool = False) -> LLM2CLIP:
    cfg = tiny_cfg()
    cfg.vision = replace(cfg.vision, arch=arch, image_size=size, trainable_blocks=trainable_blocks,
                         pretrained=pretrained)
    cfg.preprocess = preprocess_for(cfg.vision)
    torch.manual_seed(0)
    return LLM2CLIP(cfg)


def _one_step(model: LLM2CLIP, size: int) -> dict[str, torch.Tensor]:
    """One real AdamW step of the stage-2 recipe on random pixels and caption embeddings; the weights before."""
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt = torch.optim.AdamW(param_groups(model, TrainCfg(lr=1e-2, weight_decay=0.1)))
    model.train()
    torch.manual_seed(1)
    img = model.encode_image(torch.randn(4, 3, size, size))
    txt = model.encode_text_embedding(torch.randn(4, model.cfg.adapter.in_dim))
    clip_loss(img, txt, model.logit_scale).backward()
    opt.step()
    return before


def test_last_two_blocks_train_and_the_rest_of_the_backbone_stays_put():
    model = _model("dinov2-s14", 28, 2)
    before = _one_step(model, 28)
    changed = {k for k, v in model.named_parameters() if not torch.equal(v, before[k])}
    backbone = {k for k in before if k.startswith("visual.backbone.")}
    trainable = {k for k in backbone if k.startswith(("visual.backbone.net.encoder.layer.10.",
                                                      "visual.backbone.net.encoder.layer.11.",
                                                      "visual.backbone.net.layernorm."))}
    assert changed & backbone == trainable  # every trainable backbone weight moved, no frozen one did
    assert "visual.pool.proj.weight" in changed and "adapter.proj.weight" in changed
    assert all(p.grad is None for k, p in model.named_parameters() if k in backbone - trainable)


def test_zero_trainable_blocks_locks_the_backbone_under_a_trained_pool():
    model = _model("dinov2-s14", 28, 0)
    grouped = {id(p) for g in param_groups(model, TrainCfg()) for p in g["params"]}
    assert not any(id(p) in grouped for p in model.visual.backbone.parameters())
    before = _one_step(model, 28)
    assert all(torch.equal(p, before[k]) for k, p in model.named_parameters() if k.startswith("visual.backbone."))
    assert not torch.equal(model.visual.pool.proj.weight, before["visual.pool.proj.weight"])


def test_frozen_efficientnet_blocks_keep_their_batchnorm_statistics():
    model = _model("efficientnet-lite0", 64, 1, pretrained=True)
    frozen_bn = model.visual.backbone.net._blocks[3]._bn1
    top_bn = model.visual.backbone.net._bn1  # the head above the last block trains
    stats = frozen_bn.running_mean.clone(), top_bn.running_mean.clone()
    model.train()
    assert not frozen_bn.training and top_bn.training
    with torch.no_grad():
        model.encode_image(torch.randn(4, 3, 64, 64) * 3)
    assert torch.equal(frozen_bn.running_mean, stats[0]) and not torch.equal(top_bn.running_mean, stats[1])


def test_trainable_blocks_out_of_range_is_refused():
    with pytest.raises(ConfigError, match="between 0 and the backbone's 12 blocks"):
        _model("dinov2-s14", 28, 13)


def test_dinov2_layer_ids_and_no_decay():
    model = _model("dinov2-s14", 28, None)
    ids, top = layer_ids(model)
    assert top == 14  # embeddings 0, blocks 1..12, final LayerNorm 13, then pool + adapter + temperature
    assert ids["visual.backbone.net.embeddings.position_embeddings"] == 0
    assert ids["visual.backbone.net.encoder.layer.0.mlp.fc1.weight"] == 1
    assert ids["visual.backbone.net.encoder.layer.11.attention.attention.query.weight"] == 12
    assert ids["visual.backbone.net.layernorm.weight"] == 13
    no_decay = {id(p) for g in param_groups(model, TrainCfg()) if g["weight_decay"] == 0 for p in g["params"]}
    emb = model.visual.backbone.net.embeddings
    assert id(emb.position_embeddings) in no_decay and id(emb.cls_token) in no_decay
    assert id(emb.patch_embeddings.projection.weight) not in no_decay


@pytest.mark.slow
@pytest.mark.parametrize(("depth", "last"), [(None, 11), (6, 5)])
def test_stage2_trains_a_dinov2_tower_with_its_last_block_only(tmp_path, tiny_llm_dir, depth, last):
    """The command line's path: ModelShape -> default_model_cfg -> trainer -> checkpoint, with pretrained DINOv2."""
    from llm2clip.data import generate_scenes, read_dataset
    from llm2clip.defaults import dinov2_s14_weights
    from llm2clip.dinov2 import load_dinov2
    from training.checkpoint import load_checkpoint
    from training.clip import Stage2Run, train_clip
    from training.embed import embed_captions

    generate_scenes(tmp_path / "scenes", 16, "train", 0, progress=False)
    scenes = read_dataset(tmp_path / "scenes")
    embed_captions(scenes, tiny_llm_dir, tmp_path / "emb", EmbedCfg(max_batch_tokens=256), progress=False)
    shape = ModelShape(embed_dim=32, image_size=28, vision_arch="dinov2-s14", trainable_blocks=1,
                       vision_depth=depth)
    run = Stage2Run(scenes, tmp_path / "emb", tmp_path / "ckpt", shape=shape, progress=False)
    summary = train_clip(run, TrainCfg(epochs=1, batch_size=8, warmup_steps=0, bf16=False, lr=1e-2))
    assert summary["steps"] == 2
    model, _ = load_checkpoint(tmp_path / "ckpt")
    vision = model.cfg.vision
    assert (vision.arch, vision.image_size, vision.trainable_blocks, vision.depth) == ("dinov2-s14", 28, 1, depth)
    assert model.visual.backbone.num_blocks == last + 1  # read at block ``depth`` (all 12 by default)
    pretrained = load_dinov2(dinov2_s14_weights()).state_dict()
    trained = model.visual.backbone.net.state_dict()
    moved = {k for k in trained if not torch.equal(pretrained[k], trained[k])}
    assert moved and all(k.startswith((f"encoder.layer.{last}.", "layernorm.")) for k in moved), moved
