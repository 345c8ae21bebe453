"""Stage-2 code path on a tiny random model: embed shards, train, resume, export."""

import json

import numpy as np
import pytest
import torch
from tiny_models import tiny_cfg

from llm2clip.data import read_dataset
from llm2clip.errors import BundleError
from training.checkpoint import load_checkpoint, load_state
from training.clip import TrainCfg, clip_loss, lr_factor, train_clip
from training.embed import CaptionEmbeddings, embed_captions


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from llm2clip.data.scenes import generate_scenes

    out = tmp_path_factory.mktemp("scenes") / "train"
    generate_scenes(out, 24, "train", 0, progress=False)
    return read_dataset(out)


@pytest.fixture(scope="module")
def shards(scenes, tiny_llm_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("emb")
    embed_captions(scenes, tiny_llm_dir, out, batch_size=8, shard_size=20, progress=False)
    return out


def test_embed_writes_resumable_shards(scenes, shards, tiny_llm_dir):
    caps = CaptionEmbeddings(shards)
    assert caps.manifest["count"] == 2 * len(scenes)  # long + short for each scene
    assert len(caps.manifest["shards"]) == 3  # 48 captions in shards of 20
    assert caps.embeddings.dtype == torch.bfloat16
    assert caps.embeddings.shape == (48, 64)
    assert sorted(caps.keys_for(scenes.items[0].id)) == ["long", "short"]
    before = (shards / "shard-00001.safetensors").stat().st_mtime_ns
    # an interrupted run: a shard and the completion flag are gone; the rerun only redoes that shard
    (shards / "shard-00002.safetensors").unlink()
    m = json.loads((shards / "manifest.json").read_text())
    m["complete"] = False
    (shards / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="incomplete"):
        CaptionEmbeddings(shards)
    embed_captions(scenes, tiny_llm_dir, shards, batch_size=8, shard_size=20, progress=False)
    assert (shards / "shard-00001.safetensors").stat().st_mtime_ns == before
    again = CaptionEmbeddings(shards)
    assert torch.equal(again.embeddings[:40], caps.embeddings[:40])
    assert torch.allclose(again.embeddings[40:].float(), caps.embeddings[40:].float(), atol=1e-2)


def test_embed_refuses_other_settings(scenes, shards, tiny_llm_dir):
    with pytest.raises(BundleError, match="other settings"):
        embed_captions(scenes, tiny_llm_dir, shards, dtype="fp32", shard_size=20, progress=False)


def test_train_overfits_resumes_and_exports(scenes, shards, tmp_path):
    ckpt = tmp_path / "ckpt"
    cfg = TrainCfg(epochs=6, batch_size=8, lr=3e-3, backbone_lr=1e-3, warmup_steps=2, log_every=1, seed=0)
    first = train_clip(scenes, shards, ckpt, cfg, model_cfg=tiny_cfg(), progress=False)
    losses = [h["loss"] for h in first["history"]]
    assert first["steps"] == 6 * 3
    assert np.mean(losses[-3:]) < np.mean(losses[:3])  # it learns on the training set
    state = load_state(ckpt)
    assert state["step"] == 18

    more = TrainCfg(**{**cfg.__dict__, "epochs": 8})
    second = train_clip(scenes, shards, ckpt, more, progress=False)
    assert second["resumed"] and second["steps"] == 24
    assert [h["step"] for h in second["history"]][:18] == list(range(1, 19))

    model, text = load_checkpoint(ckpt)
    assert text["fingerprint"] and not model.training
    assert (ckpt / "history.json").is_file()


def test_clip_loss_prefers_matching_pairs():
    e = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    scale = torch.tensor(np.log(20.0))
    assert clip_loss(e, e, scale) < clip_loss(e, e.roll(1, dims=0), scale)


def test_schedule_warms_up_then_decays():
    f = [lr_factor(s, 100, 10) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[50] < f[10] and f[99] < 0.01
