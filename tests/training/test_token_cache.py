"""Stage 2's frozen-prefix token cache: DINOv2's prefix + suffix is its forward, a cached run trains as an
uncached one, and a cache is never reused for another prefix, image size or weights."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from tiny_models import tiny_cfg

from llm2clip.dinov2 import Dinov2ViT
from llm2clip.model import LLM2CLIP
from llm2clip.vision import preprocess_for
from training.config import EmbedCfg, TrainCfg
from training.distributed import DistInfo
from training.token_cache import TokenCache, cache_key

SIZE = 56  # a 4 x 4 grid of 14 px patches


def _cfg(size: int = SIZE, trainable_blocks: int | None = 2, arch: str = "dinov2-s14"):
    cfg = tiny_cfg()
    cfg.vision = replace(cfg.vision, arch=arch, image_size=size, trainable_blocks=trainable_blocks,
                         pretrained=False)
    cfg.preprocess = preprocess_for(cfg.vision)
    return cfg


def _model(size: int = SIZE, trainable_blocks: int | None = 2) -> LLM2CLIP:
    torch.manual_seed(0)
    return LLM2CLIP(_cfg(size, trainable_blocks))


def _images(n: int, size: int = SIZE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("stop", [0, 1, 10, 12])
def test_prefix_then_suffix_is_the_forward(stop):
    torch.manual_seed(0)
    net = Dinov2ViT().eval()
    pixels = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        whole = net(pixels)
        split = net.forward_from(net.forward_prefix(pixels, stop), stop)
    assert split.shape == (2, 17, 384)
    torch.testing.assert_close(split, whole, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="between 0 and 12"):
        net.forward_prefix(pixels, 13)


def test_tower_from_tokens_matches_encode_image():
    model = _model().eval()
    assert model.visual.frozen_prefix == 10
    pixels = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        tokens = model.visual.backbone.forward_prefix(pixels, 10)
        torch.testing.assert_close(model.encode_image_tokens(tokens, 10), model.encode_image(pixels),
                                   rtol=1e-5, atol=1e-5)
    assert _model(trainable_blocks=None).visual.frozen_prefix == 0  # all blocks train: nothing to cache
    assert _model(trainable_blocks=0).visual.frozen_prefix == 12  # locked: only the final norm runs on tokens
    torch.manual_seed(0)
    assert LLM2CLIP(_cfg(64, 1, "efficientnet-lite0")).visual.frozen_prefix == 0  # no token entry point


def test_cache_holds_the_prefix_tokens_and_is_reused(tmp_path):
    model, images = _model(), _images(5)
    ids = [f"s{i}" for i in range(5)]
    cache = TokenCache.open(model, images, ids, tmp_path, TrainCfg(bf16=False), DistInfo())
    assert cache is not None and cache.start == 10 and len(cache) == 5
    assert cache.tokens.dtype == np.float16 and cache.tokens.shape == (5, 17, 384)
    from training.images import normalize

    with torch.no_grad():
        ref = model.visual.backbone.forward_prefix(normalize(torch.from_numpy(images[[3, 1]]),
                                                             model.cfg.preprocess), 10)
    torch.testing.assert_close(cache.batch([3, 1]), ref, rtol=2e-3, atol=2e-3)  # float16 storage
    mtime = cache.path.stat().st_mtime_ns
    again = TokenCache.open(model, images, ids, tmp_path, TrainCfg(bf16=False), DistInfo())
    assert again.path == cache.path and again.path.stat().st_mtime_ns == mtime  # read, not rebuilt
    assert TokenCache.open(model, images, ids, tmp_path, TrainCfg(cache_frozen_tokens=False), DistInfo()) is None
    assert list(tmp_path.iterdir()) == [cache.path]  # no temporary file left behind


def test_a_changed_prefix_size_weights_or_images_changes_the_key():
    images, ids = _images(4), ["a", "b", "c", "d"]
    base = cache_key(_model(), 10, images, ids, bf16=False)
    assert cache_key(_model(), 10, images, ids, bf16=False) == base  # deterministic
    assert cache_key(_model(trainable_blocks=3), 9, images, ids, bf16=False) != base  # another N
    assert cache_key(_model(size=70), 10, _images(4, 70), ids, bf16=False) != base  # another image size
    moved = _model()
    with torch.no_grad():
        moved.visual.backbone.net.encoder.layer[4].mlp.fc1.bias.add_(1e-3)  # a frozen block's weight
    assert cache_key(moved, 10, images, ids, bf16=False) != base
    trained = _model()
    with torch.no_grad():  # a trainable block's weight: the cached tokens do not depend on it
        trained.visual.backbone.net.encoder.layer[11].mlp.fc1.bias.add_(1e-3)
    assert cache_key(trained, 10, images, ids, bf16=False) == base
    assert cache_key(_model(), 10, _images(4, seed=1), ids, bf16=False) != base  # other pixels
    assert cache_key(_model(), 10, images, ["a", "b", "c", "e"], bf16=False) != base  # other items
    assert cache_key(_model(), 10, images, ids, bf16=True) != base  # another compute precision


def test_another_prefix_in_the_same_folder_builds_another_cache(tmp_path):
    images, ids = _images(3), ["a", "b", "c"]
    two = TokenCache.open(_model(trainable_blocks=2), images, ids, tmp_path, TrainCfg(bf16=False), DistInfo())
    three = TokenCache.open(_model(trainable_blocks=3), images, ids, tmp_path, TrainCfg(bf16=False), DistInfo())
    assert two.path != three.path and (two.start, three.start) == (10, 9)
    assert not np.array_equal(two.tokens, three.tokens[:, :, :])


@pytest.fixture(scope="module")
def scenes_and_shards(tmp_path_factory, tiny_llm_dir):
    from llm2clip.data import generate_scenes, read_dataset
    from training.embed import embed_captions

    root = tmp_path_factory.mktemp("tokcache")
    generate_scenes(root / "scenes", 16, "train", 0, progress=False)
    scenes = read_dataset(root / "scenes")
    embed_captions(scenes, tiny_llm_dir, root / "emb", EmbedCfg(max_batch_tokens=256), progress=False)
    return scenes, root / "emb"


@pytest.mark.slow
@pytest.mark.parametrize("bf16", [False, True])
def test_cached_run_trains_as_the_uncached_one(tmp_path, scenes_and_shards, bf16):
    from training.checkpoint import load_checkpoint
    from training.clip import Stage2Run, train_clip

    scenes, shards = scenes_and_shards
    losses, states = {}, {}
    for cached in (False, True):
        out = tmp_path / f"cached-{cached}"
        run = Stage2Run(scenes, shards, out, model_cfg=_cfg(), progress=False)
        cfg = TrainCfg(epochs=3, batch_size=8, warmup_steps=0, lr=1e-3, bf16=bf16, log_every=1,
                       cache_frozen_tokens=cached)
        summary = train_clip(run, cfg)
        losses[cached] = [h["loss"] for h in summary["history"]]
        states[cached] = load_checkpoint(out)[0].state_dict()
        assert any((out / "token_cache").glob("tokens-*.npy")) == cached
    assert len(losses[True]) == 6
    tol = 2e-2 if bf16 else 2e-3
    np.testing.assert_allclose(losses[True], losses[False], rtol=tol, atol=tol)
    assert losses[True][0] != losses[True][-1]  # it trained
    # the checkpoint is the whole tower either way: frozen blocks included, unchanged
    assert states[True].keys() == states[False].keys()
    init = _model().state_dict()
    frozen = "visual.backbone.net.encoder.layer.3.attention.attention.query.weight"
    assert torch.equal(states[True][frozen], init[frozen])
    top = "visual.backbone.net.encoder.layer.11.mlp.fc2.weight"
    assert not torch.equal(states[True][top], init[top])
    # Adam turns tiny gradient differences into full-size steps on a few weights: compare the updates' directions
    moves = [(states[c][top] - init[top]).flatten() for c in (True, False)]
    assert torch.nn.functional.cosine_similarity(*moves, dim=0) > 0.99


def test_command_line_switches_the_cache_and_names_its_folder():
    from llm2clip.cliargs import dataclass_values
    from llm2clip_cli.main import build_parser

    base = ["train", "clip", "--data", "d", "--embeddings", "e", "--out", "o"]
    args = build_parser().parse_args(base)
    assert args.token_cache is None and "cache_frozen_tokens" not in dataclass_values(args, TrainCfg)
    args = build_parser().parse_args([*base, "--no-cache-frozen-tokens", "--token-cache", "shared"])
    assert dataclass_values(args, TrainCfg)["cache_frozen_tokens"] is False and str(args.token_cache) == "shared"
    assert TrainCfg().cache_frozen_tokens  # on by default


@pytest.mark.slow
def test_a_resumed_run_reads_the_cache_its_first_part_built(tmp_path, scenes_and_shards):
    """The checkpoint's frozen weights are the ones the cache was keyed by: a resume finds it, builds nothing."""
    from training.clip import Stage2Run, train_clip

    scenes, shards = scenes_and_shards
    cfg = TrainCfg(epochs=2, batch_size=8, warmup_steps=0, lr=1e-3, bf16=False, log_every=1)
    first = train_clip(Stage2Run(scenes, shards, tmp_path / "run", model_cfg=_cfg(), stop_at=2, progress=False), cfg)
    (cache,) = (tmp_path / "run" / "token_cache").glob("tokens-*.npy")
    mtime = cache.stat().st_mtime_ns
    rest = train_clip(Stage2Run(scenes, shards, tmp_path / "run", model_cfg=_cfg(), progress=False), cfg)
    assert (first["steps"], rest["steps"], rest["resumed"]) == (2, 4, True)
    assert list((tmp_path / "run" / "token_cache").iterdir()) == [cache] and cache.stat().st_mtime_ns == mtime
