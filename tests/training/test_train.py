"""Stage-2 code path on a tiny random model: embed shards, train, resume, export; the recipe's pieces."""

import json

import numpy as np
import pytest
import torch
from tiny_models import tiny_cfg

from llm2clip.data import read_dataset
from llm2clip.errors import BundleError
from llm2clip.model import LLM2CLIP
from training.checkpoint import load_checkpoint, load_state
from training.clip import TrainCfg, clip_loss, layer_ids, lr_factor, param_groups, train_clip
from training.embed import CaptionEmbeddings, embed_captions


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from llm2clip.data import generate_scenes

    out = tmp_path_factory.mktemp("scenes") / "train"
    generate_scenes(out, 24, "train", 0, progress=False)
    return read_dataset(out)


@pytest.fixture(scope="module")
def shards(scenes, tiny_llm_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("emb")
    embed_captions(scenes, tiny_llm_dir, out, shard_size=20, progress=False, max_batch_tokens=256)
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
    embed_captions(scenes, tiny_llm_dir, shards, shard_size=20, progress=False, max_batch_tokens=256)
    assert (shards / "shard-00001.safetensors").stat().st_mtime_ns == before
    again = CaptionEmbeddings(shards)
    assert torch.equal(again.embeddings[:40], caps.embeddings[:40])
    assert torch.allclose(again.embeddings[40:].float(), caps.embeddings[40:].float(), atol=1e-2)


def test_embed_refuses_other_settings(scenes, shards, tiny_llm_dir):
    with pytest.raises(BundleError, match="other settings"):
        embed_captions(scenes, tiny_llm_dir, shards, dtype="fp32", shard_size=20, progress=False)


def test_train_overfits_resumes_and_exports(scenes, shards, tmp_path):
    ckpt = tmp_path / "ckpt"
    # fp32: on this CPU bf16 autocast makes the 64 px model ~10x slower (the e2e run trains in bf16)
    cfg = TrainCfg(epochs=6, batch_size=8, lr=3e-3, backbone_lr=1e-3, warmup_steps=2, log_every=1, seed=0,
                   bf16=False)
    # the training set doubles as validation set: the point is that recall is measured and recorded
    first = train_clip(scenes, shards, ckpt, cfg, model_cfg=tiny_cfg(), progress=False, val=scenes,
                       val_embeddings=shards)
    losses = [h["loss"] for h in first["history"]]
    assert first["steps"] == 6 * 3
    assert np.mean(losses[-3:]) < np.mean(losses[:3])  # it learns on the training set
    state = load_state(ckpt)
    assert state["step"] == 18
    val = [h for h in first["history"] if "val_t2i_r1" in h]
    assert [h["step"] for h in val] == [3, 6, 9, 12, 15, 18]  # every epoch end
    assert all(0 <= h[k] <= 1 for h in val for k in ("val_t2i_r1", "val_t2i_r5", "val_i2t_r1", "val_i2t_r5"))
    assert val[-1]["val_t2i_r5"] >= val[-1]["val_t2i_r1"]
    assert (ckpt / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # frozen BatchNorm: the pretrained running statistics are untouched, the BN weights trained
    torch.manual_seed(0)
    fresh = LLM2CLIP(tiny_cfg()).state_dict()
    trained = load_checkpoint(ckpt)[0].state_dict()
    bn = "visual.backbone.net._blocks.3._bn1."
    assert torch.equal(trained[bn + "running_mean"], fresh[bn + "running_mean"])
    assert torch.equal(trained[bn + "running_var"], fresh[bn + "running_var"])
    assert not torch.equal(trained[bn + "weight"], fresh[bn + "weight"])

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


def test_interrupted_run_resumes_exactly(scenes, shards, tmp_path):
    """Captions, permutations and stochastic depth derive from (seed, step): no random state to save, and a
    resumed run continues exactly as if it had never stopped."""
    from safetensors.torch import load_file

    cfg = TrainCfg(epochs=1, batch_size=8, lr=3e-3, warmup_steps=1, drop_path=0.2, bf16=False, log_every=1, seed=1)
    train_clip(scenes, shards, tmp_path / "whole", cfg, model_cfg=tiny_cfg(), progress=False)
    part = train_clip(scenes, shards, tmp_path / "parts", cfg, model_cfg=tiny_cfg(), progress=False, stop_at=2)
    assert part["steps"] == 2 and load_state(tmp_path / "parts")["step"] == 2
    rest = train_clip(scenes, shards, tmp_path / "parts", cfg, progress=False)  # resumes mid-epoch
    assert rest["resumed"] and rest["steps"] == 3
    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("whole", "parts"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    whole = json.loads((tmp_path / "whole" / "history.json").read_text())
    assert [h["loss"] for h in whole] == [h["loss"] for h in rest["history"]]


def test_layer_decay_param_groups():
    torch.manual_seed(0)
    model = LLM2CLIP(tiny_cfg())
    ids, top = layer_ids(model)
    assert top == 18  # stem 0, 16 MBConv blocks 1..16, head 17, then pool + adapter + temperature
    assert ids["visual.backbone.net._conv_stem.weight"] == 0
    assert ids["visual.backbone.net._blocks.0._depthwise_conv.weight"] == 1
    assert ids["visual.backbone.net._blocks.15._project_conv.weight"] == 16
    assert ids["visual.backbone.net._bn1.weight"] == 17
    assert ids["visual.pool.proj.weight"] == ids["adapter.proj.weight"] == ids["logit_scale"] == top

    cfg = TrainCfg(lr=1e-3, layer_decay=0.5, weight_decay=0.1)
    groups = param_groups(model, cfg)
    lr = {g["layer"]: g["lr"] for g in groups}
    assert lr[top] == 1e-3 and lr[17] == pytest.approx(5e-4) and lr[0] == pytest.approx(1e-3 * 0.5**18)
    assert all(lr[i] < lr[i + 1] for i in range(top))
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())  # each parameter exactly once
    for g in groups:
        if g["name"].endswith("_nd"):
            assert g["weight_decay"] == 0 and all(p.ndim < 2 or p is model.logit_scale or p is model.visual.pool.pos
                                                  for p in g["params"])
        else:
            assert g["weight_decay"] == 0.1 and all(p.ndim >= 2 for p in g["params"])
    assert any(model.visual.pool.pos is p for g in groups if g["name"].endswith("_nd") for p in g["params"])
    # an explicit backbone lr sets the backbone's top layer; the decay goes down from there
    lr = {g["layer"]: g["lr"] for g in param_groups(model, TrainCfg(lr=1e-3, backbone_lr=2e-4, layer_decay=0.5))}
    assert lr[top] == 1e-3 and lr[17] == pytest.approx(2e-4) and lr[16] == pytest.approx(1e-4)


def test_save_curves_writes_a_png(tmp_path):
    from training.plots import save_curves

    history = [{"step": s, "epoch": s // 5, "loss": 2.0 / s, "logit_scale": 14.0 + s, "lr": 1e-4 * s, "img_s": 9.0}
               for s in range(1, 11)]
    history[4].update(val_t2i_r1=0.2, val_t2i_r5=0.5, val_i2t_r1=0.25, val_i2t_r5=0.6)
    history[9].update(val_t2i_r1=0.4, val_t2i_r5=0.7, val_i2t_r1=0.45, val_i2t_r5=0.8)
    out = save_curves(history, tmp_path / "curves.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not (tmp_path / "curves.png.tmp").exists()
    save_curves(history[:3], out)  # no validation entries yet: three panels
    assert out.stat().st_size > 1000


def test_training_sees_a_non_square_image_as_the_service_does(tmp_path):
    """Training's image cache and the bundle's preprocessing give the same pixels for any image shape."""
    from PIL import Image

    from llm2clip.config import PreprocessCfg
    from llm2clip.data import Dataset
    from llm2clip.data.dataset import Item
    from llm2clip.preprocess import preprocess_image
    from training.clip import load_images, normalize

    rng = np.random.default_rng(0)
    shapes = [(300, 200), (120, 400), (64, 64)]
    items = []
    for n, (w, h) in enumerate(shapes):
        # a left-to-right gradient with a marker near one edge: squashing keeps the marker, cropping does not
        arr = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
        arr[:, : w // 10] = (255, 0, 0)
        Image.fromarray(arr).save(tmp_path / f"{n}.png")
        items.append(Item(id=str(n), image=f"{n}.png", captions={"long": "x"}))
    ds = Dataset(root=tmp_path, items=items)
    cfg = PreprocessCfg(size=96)
    trained = normalize(torch.from_numpy(load_images(ds, cfg, progress=False)), cfg).numpy()
    for n in range(len(shapes)):
        with Image.open(tmp_path / f"{n}.png") as im:
            served = preprocess_image(im, cfg)
        np.testing.assert_allclose(trained[n], served, atol=1e-5)
