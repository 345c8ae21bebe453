"""Stage-2 code path on a tiny random model: embed shards, train, resume; the recipe's pieces and presets."""

import json

import numpy as np
import pytest
import torch
from tiny_models import tiny_cfg

from llm2clip.data import read_dataset
from llm2clip.errors import BundleError, DatasetError, LLM2CLIPError
from llm2clip.model import LLM2CLIP
from training.checkpoint import load_checkpoint, load_state
from training.clip import Stage2Run, train_clip
from training.clip_recipe import clip_loss, geometry_loss, layer_ids, param_groups
from training.config import EmbedCfg, ModelShape, TrainCfg
from training.embed import CaptionEmbeddings, embed_captions
from training.recipes import STAGE2_PRESETS, stage2_preset

SHARDS = EmbedCfg(shard_size=20, max_batch_tokens=256)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from llm2clip.data import generate_scenes

    out = tmp_path_factory.mktemp("scenes") / "train"
    generate_scenes(out, 24, "train", 0, progress=False)
    return read_dataset(out)


@pytest.fixture(scope="module")
def shards(scenes, tiny_llm_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("emb")
    embed_captions(scenes, tiny_llm_dir, out, SHARDS, progress=False)
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
    embed_captions(scenes, tiny_llm_dir, shards, SHARDS, progress=False)
    assert (shards / "shard-00001.safetensors").stat().st_mtime_ns == before
    again = CaptionEmbeddings(shards)
    assert torch.equal(again.embeddings[:40], caps.embeddings[:40])
    assert torch.allclose(again.embeddings[40:].float(), caps.embeddings[40:].float(), atol=1e-2)


def test_embed_refuses_other_settings(scenes, shards, tiny_llm_dir):
    with pytest.raises(BundleError, match="other settings"):
        embed_captions(scenes, tiny_llm_dir, shards, EmbedCfg(dtype="fp32", shard_size=20), progress=False)


@pytest.mark.slow
def test_train_overfits_validates_and_resumes(scenes, shards, tmp_path):
    ckpt = tmp_path / "ckpt"
    # fp32: on this CPU bf16 autocast makes the 64 px model ~10x slower (the e2e run trains in bf16)
    cfg = TrainCfg(epochs=6, batch_size=8, lr=3e-3, backbone_lr=1e-3, warmup_steps=2, log_every=1, seed=0,
                   bf16=False)
    # the training set doubles as validation set: the point is that recall is measured and recorded
    first = train_clip(Stage2Run(scenes, shards, ckpt, model_cfg=tiny_cfg(), progress=False, val=scenes,
                                 val_embeddings=shards), cfg)
    losses = [h["loss"] for h in first["history"]]
    assert first["steps"] == 6 * 3
    assert np.mean(losses[-3:]) < np.mean(losses[:3])  # it learns on the training set
    state = load_state(ckpt)
    assert state["step"] == 18
    val = [h for h in first["history"] if "val_t2i_r1" in h]
    assert [h["step"] for h in val] == [3, 6, 9, 12, 15, 18]  # every epoch end
    # the last entry's recall is that of the checkpoint written at the same step, on the same pairs
    from training.clip import evaluate_retrieval, load_images

    model = load_checkpoint(ckpt)[0]
    caps = CaptionEmbeddings(shards)
    images = torch.from_numpy(load_images(scenes, model.cfg.preprocess, progress=False))
    text = torch.stack([caps.get(item.id, "long") for item in scenes])
    recall = evaluate_retrieval(model, images, text, torch.device("cpu"), bf16=False)
    assert {k: val[-1][f"val_{k}"] for k in recall} == {k: round(v, 4) for k, v in recall.items()}
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
    second = train_clip(Stage2Run(scenes, shards, ckpt, progress=False), more)
    assert second["resumed"] and second["steps"] == 24
    assert [h["step"] for h in second["history"]][:18] == list(range(1, 19))

    model, text = load_checkpoint(ckpt)
    assert text["fingerprint"] == caps.manifest["text_encoder"]["fingerprint"] and not model.training
    assert json.loads((ckpt / "history.json").read_text()) == second["history"]


def test_clip_loss_prefers_matching_pairs():
    e = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    scale = torch.tensor(np.log(20.0))
    assert clip_loss(e, e, scale) < clip_loss(e, e.roll(1, dims=0), scale)


def test_geometry_loss_is_zero_only_when_the_adapter_keeps_the_cosines():
    torch.manual_seed(0)
    x = torch.randn(16, 32) + 5.0  # a large common component, as an LLM's embeddings have
    q, _ = torch.linalg.qr(torch.randn(32, 32))
    kept = (x - x.mean(0)) @ q * 3.0  # a rotation and a scale of the centred input keeps every cosine
    assert geometry_loss(x, kept) < 1e-6
    assert geometry_loss(x + 100.0, kept) < 1e-6  # the common component does not count
    out = (torch.ones(16, 32) + 0.01 * torch.randn(16, 32)).requires_grad_()  # a collapsed adapter
    before = geometry_loss(x, out)
    assert before > 0.01
    opt = torch.optim.Adam([out], lr=0.05)
    for _ in range(100):
        opt.zero_grad()
        geometry_loss(x, out).backward()
        opt.step()
    assert geometry_loss(x, out) < before / 2


def test_text_geometry_keeps_the_encoders_cosines_through_the_adapter(scenes, shards, tmp_path):
    """With the term on, the trained adapter's cosines over the training captions stay closer to the text
    encoder's than the same run's without it."""
    caps = CaptionEmbeddings(shards)
    x = torch.stack([caps.get(item.id, "long") for item in scenes]).float()
    errors = {}
    for weight in (0.0, 20.0):
        run = Stage2Run(scenes, shards, tmp_path / f"w{weight}", shape=ModelShape(image_size=32, embed_dim=16),
                        progress=False)
        train_clip(run, TrainCfg(epochs=10, batch_size=8, warmup_steps=2, lr=5e-3, text_geometry=weight))
        model, _ = load_checkpoint(tmp_path / f"w{weight}")
        assert load_state(tmp_path / f"w{weight}")["train_cfg"]["text_geometry"] == weight
        with torch.no_grad():
            errors[weight] = float(geometry_loss(x, model.encode_text_embedding(x)))
    assert errors[20.0] < 0.5 * errors[0.0], errors


def test_schedule_warms_up_then_decays():
    from training.schedule import lr_factor

    f = [lr_factor(s, 100, 10) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[50] < f[10] and f[99] < 0.01


@pytest.mark.slow
def test_interrupted_run_resumes_exactly(scenes, shards, tmp_path):
    """Captions, permutations and stochastic depth derive from (seed, step): no random state to save, and a
    resumed run continues exactly as if it had never stopped."""
    from safetensors.torch import load_file

    cfg = TrainCfg(epochs=1, batch_size=8, lr=3e-3, warmup_steps=1, drop_path=0.2, bf16=False, log_every=1, seed=1)
    train_clip(Stage2Run(scenes, shards, tmp_path / "whole", model_cfg=tiny_cfg(), progress=False), cfg)
    part = train_clip(Stage2Run(scenes, shards, tmp_path / "parts", model_cfg=tiny_cfg(), progress=False,
                                stop_at=2), cfg)
    assert part["steps"] == 2 and load_state(tmp_path / "parts")["step"] == 2
    rest = train_clip(Stage2Run(scenes, shards, tmp_path / "parts", progress=False), cfg)  # resumes mid-epoch
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
    from PIL import Image

    out = save_curves(history, tmp_path / "curves.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not (tmp_path / "curves.png.tmp").exists()
    with Image.open(out) as im:
        four = im.size
    save_curves(history[:3], out)  # no validation entries yet: three panels, in a figure 3/4 as wide
    with Image.open(out) as im:
        three = im.size
    assert three[1] == four[1] and three[0] / four[0] == pytest.approx(3 / 4, abs=0.01)


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


def test_presets_are_the_recipes_they_replace():
    # the demo's recipe: the paper's for 8 epochs with the repro's scaled schedule (4,000 scenes: 496 steps), block
    # 8 of DINOv2 at 5e-5
    assert stage2_preset("demo", train_items=4000, seed=2) == TrainCfg(
        epochs=8, seed=2, warmup_steps=24, log_every=4, caption_keys=("long", "long", "long", "short"),
        backbone_lr=5e-5)
    # the demo's recipe before it: the same on EfficientNet-Lite0 for 8 epochs (248 steps)
    assert stage2_preset("demo-e160", train_items=2000, seed=2) == TrainCfg(
        epochs=8, seed=2, warmup_steps=12, log_every=2, caption_keys=("long", "long", "long", "short"))
    # the demo's earlier recipe: one backbone lr, BatchNorm in train mode, no stochastic depth
    assert stage2_preset("simple", epochs=3, seed=2) == TrainCfg(
        epochs=3, seed=2, backbone_lr=2e-4, layer_decay=1.0, freeze_bn=False, drop_path=0.0)
    # the repro's: warmup over 1/20 of the steps and 100 history points, from the training set's size
    assert stage2_preset("repro", train_items=4000, batch_size=64, lr=5e-4, seed=0) == TrainCfg(
        epochs=10, batch_size=64, lr=5e-4, seed=0, warmup_steps=31, log_every=6)
    assert stage2_preset("repro", train_items=24, epochs=1, batch_size=8) == TrainCfg(
        epochs=1, batch_size=8, warmup_steps=1, log_every=1)
    assert stage2_preset("repro", train_items=4000, warmup_steps=7).warmup_steps == 7  # an override wins
    assert stage2_preset("default") == TrainCfg()
    assert set(STAGE2_PRESETS) == {"default", "demo", "demo-e160", "simple", "repro"}
    with pytest.raises(LLM2CLIPError, match="unknown stage-2 preset 'fast'"):
        stage2_preset("fast")
    with pytest.raises(TypeError, match="lr_max"):
        stage2_preset("simple", lr_max=1.0)
    with pytest.raises(ValueError, match="train_items"):
        stage2_preset("repro")


def test_cli_trains_the_preset_with_the_options_given(scenes, shards, tmp_path, monkeypatch, capsys):
    import training.clip
    from llm2clip_cli.main import main

    calls = []
    monkeypatch.setattr(training.clip, "train_clip",
                        lambda run, cfg: calls.append((run, cfg)) or {"rank": 0, "steps": 0, "history": []})
    base = ["train", "clip", "--data", str(scenes.root), "--embeddings", str(shards), "--out", str(tmp_path / "c")]
    assert main([*base, "--preset", "simple", "--layer-decay", "0.5", "--no-bf16", "--image-size", "64"]) == 0
    run, cfg = calls[-1]
    # the preset's values, except the ones given, which win even over the preset's own
    assert cfg == stage2_preset("simple", layer_decay=0.5, bf16=False)
    assert run.shape.image_size == 64 and run.shape.embed_dim == 256 and run.embeddings == shards
    assert main([*base, "--epochs", "2"]) == 0
    assert calls[-1][1] == TrainCfg(epochs=2)  # no preset: the default one, TrainCfg's defaults
    assert main([*base, "--preset", "repro", "--batch-size", "8"]) == 0
    assert calls[-1][1] == stage2_preset("repro", train_items=len(scenes), batch_size=8)
    assert main([*base, "--preset", "demo", "--caption-keys", "long,long,long_w1,short"]) == 0
    assert calls[-1][1].caption_keys == ("long", "long", "long_w1", "short") and calls[-1][1].epochs == 8 and calls[-1][1].backbone_lr == 5e-5
    # the demo's preset brings the tower it was chosen for; an option given wins over it
    assert calls[-1][0].shape == ModelShape(vision_arch="dinov2-s14", image_size=224, vision_depth=8,
                                            trainable_blocks=1)
    assert main([*base, "--preset", "demo", "--image-size", "112"]) == 0
    assert calls[-1][0].shape == ModelShape(vision_arch="dinov2-s14", image_size=112, vision_depth=8,
                                            trainable_blocks=1)
    assert main([*base, "--preset", "demo-e160"]) == 0
    assert calls[-1][0].shape == ModelShape(vision_arch="efficientnet-lite0", image_size=160)
    assert "checkpoint" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([*base, "--caption-keys", " , "])
    assert "at least one caption key" in capsys.readouterr().err


def test_a_preset_brings_its_tower_unless_another_backbone_is_named():
    from training.recipes import stage2_shape

    demo = stage2_shape("demo")
    assert (demo.vision_arch, demo.image_size, demo.vision_depth, demo.trainable_blocks) == ("dinov2-s14", 224, 8, 1)
    assert stage2_shape("demo", trainable_blocks=0).trainable_blocks == 0
    # another backbone takes none of the preset's tower settings (a read-out depth means nothing to EfficientNet)
    assert stage2_shape("demo", vision_arch="efficientnet-lite0") == ModelShape(vision_arch="efficientnet-lite0")
    assert stage2_shape("demo", vision_arch="dinov2-s14", image_size=168).vision_depth == 8  # the same one: kept
    assert stage2_shape("default") == ModelShape() and stage2_shape("repro", image_size=64).image_size == 64
    with pytest.raises(LLM2CLIPError, match="unknown stage-2 preset"):
        stage2_shape("fast")


def test_a_backbone_other_than_the_presets_is_warned_about(scenes, shards, tmp_path, monkeypatch, caplog):
    import training.clip
    from llm2clip_cli.main import main

    monkeypatch.setattr(training.clip, "train_clip", lambda run, cfg: {"rank": 0, "steps": 0, "history": []})
    base = ["train", "clip", "--data", str(scenes.root), "--embeddings", str(shards), "--out", str(tmp_path / "c")]
    with caplog.at_level("WARNING", logger="training.recipes"):
        assert main([*base, "--preset", "demo", "--vision-arch", "efficientnet-lite0"]) == 0
    assert "chosen for dinov2-s14, not efficientnet-lite0" in caplog.text and "demo-e160" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="training.recipes"):
        assert main([*base, "--preset", "demo-e160"]) == 0
        assert main([*base, "--preset", "repro", "--vision-arch", "dinov2-s14"]) == 0  # no tower of its own
    assert "chosen for" not in caplog.text


def test_validation_needs_its_embeddings(scenes, shards, tmp_path):
    with pytest.raises(LLM2CLIPError, match="validation needs both"):
        train_clip(Stage2Run(scenes, shards, tmp_path / "c", model_cfg=tiny_cfg(), val=scenes), TrainCfg())
    assert not (tmp_path / "c").exists()


def test_caption_draws_follow_the_keys_listed(scenes, shards, tmp_path, monkeypatch):
    """A key listed three times is drawn three times as often; a key the item lacks is never drawn."""
    from training.clip import Stage2Trainer, drawable
    from training.distributed import DistInfo

    assert drawable(["long", "short"], ("long", "long", "long", "short", "long_w")) == ["long"] * 3 + ["short"]
    assert drawable(["short", "long"], ("long", "short")) == ["long", "short"]
    run = Stage2Run(scenes, shards, tmp_path / "run", shape=ModelShape(image_size=32, embed_dim=16),
                    progress=False)
    trainer = Stage2Trainer(run, TrainCfg(batch_size=8, caption_keys=("long", "long", "long", "short")), DistInfo())
    drawn: list[str] = []
    get = CaptionEmbeddings.get
    monkeypatch.setattr(CaptionEmbeddings, "get", lambda self, item, key: (drawn.append(key), get(self, item, key))[1])
    for step in range(100):
        trainer.step = step
        trainer._batch(torch.arange(8))
    assert len(drawn) == 800
    assert 0.70 < drawn.count("long") / 800 < 0.80


def test_a_caption_key_no_item_has_is_refused(scenes, shards, tmp_path):
    run = Stage2Run(scenes, shards, tmp_path / "run", shape=ModelShape(image_size=32, embed_dim=16), progress=False)
    with pytest.raises(DatasetError, match="caption keys lnog are in no item"):
        train_clip(run, TrainCfg(epochs=1, batch_size=8, caption_keys=("long", "lnog")))
