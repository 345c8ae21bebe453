"""Stage 1 on a device other than the CPU: the device setting, and that every tensor of a micro-batch's loss goes
where the model is.

A machine without a GPU cannot run CUDA, so the model goes to torch's ``meta`` device instead: it computes
shapes only, and an op that mixes a meta tensor with one left on the CPU raises, as CUDA does. Autocast knows
no meta device; the fixture turns it off there (the CPU and CUDA paths are untouched). The run on a real GPU is
``bench/device_check.py``'s stage-1 check.
"""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM

from llm2clip.data import generate_scenes, read_dataset
from llm2clip.errors import DatasetError
from llm2clip.text import LLMEncoder, Tokenizer
from training.stage1.batches import ContrastiveLoss, MntpLoss, encode
from training.stage1.config import Stage1Cfg
from training.stage1.loop import resolve_device
from training.stage1.train import train_text
from training.stage1.views import load_views

HERE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def on_meta(monkeypatch):
    import torch.fx.experimental._config as fx_config

    autocast, enabled = torch.autocast, torch.is_autocast_enabled
    monkeypatch.setattr(torch, "autocast",
                        lambda device_type, *a, **k: contextlib.nullcontext() if device_type == "meta"
                        else autocast(device_type, *a, **k))
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda *a: False if a and a[0] == "meta" else enabled(*a))
    # boolean masks have data-dependent shapes, which meta tensors lack: assume every element is kept
    with fx_config.patch(meta_nonzero_assume_all_nonzero=True):
        yield


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    out = tmp_path_factory.mktemp("s1dev") / "train"
    generate_scenes(out, 8, "train", 0, progress=False)
    return read_dataset(out)


@pytest.fixture(scope="module")
def views(scenes, tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("s1dev_views")
    return load_views(ckpt, scenes, Stage1Cfg(hard_negatives=True), progress=False)


def test_the_device_setting(monkeypatch):
    assert resolve_device(None) == torch.device(HERE)
    assert resolve_device("cpu") == torch.device("cpu")
    for bad in ("tpu", "cuda:x", "meta", ""):
        with pytest.raises(DatasetError, match="choose cpu, cuda or cuda:N"):
            resolve_device(bad or "gpu0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(DatasetError, match="sees no CUDA device: use --device cpu"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device(None) == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(DatasetError, match="choose cuda:0 .. cuda:1"):
        resolve_device("cuda:2")


def test_a_run_asking_for_a_missing_gpu_is_refused_before_it_writes(scenes, tiny_llm_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(DatasetError, match="no CUDA device"):
        train_text(scenes, tmp_path / "out", tiny_llm_dir, Stage1Cfg(steps=1, device="cuda"), progress=False)
    assert not (tmp_path / "out").exists()


def test_contrastive_batches_go_to_the_models_device(on_meta, views, tiny_llm_dir):
    tok = Tokenizer(tiny_llm_dir, 512)
    enc = LLMEncoder(AutoModel.from_pretrained(str(tiny_llm_dir), attn_implementation="eager").to("meta"))
    texts, _ = views.sampler(4, 0, stream=0)(0)
    emb = encode(enc, tok, texts, max_chunks=4)
    assert emb.device.type == "meta" and emb.shape == (len(texts), enc.dim)
    loss = ContrastiveLoss(enc, tok, views.sampler(4, 0, stream=0), 0.05, length_buckets=4)(0)
    assert loss.device.type == "meta" and loss.shape == ()


def test_mntp_batches_go_to_the_models_device(on_meta, views, tiny_llm_dir):
    tok = Tokenizer(tiny_llm_dir, 512)
    causal = AutoModelForCausalLM.from_pretrained(str(tiny_llm_dir), attn_implementation="eager").to("meta")
    loss = MntpLoss(causal, tok, views.sampler(4, 0, stream=1), tok.pad_id, Stage1Cfg(length_buckets=4))(0)
    assert loss.device.type == "meta" and loss.shape == ()


def test_a_run_records_its_device_and_resumes_on_another(scenes, tiny_llm_dir, tmp_path):
    cfg = {"batch_size": 4, "save_every": 1, "warmup_steps": 1, "paraphrases": 1, "seed": 3}
    out = tmp_path / "text"
    first = train_text(scenes, out, tiny_llm_dir, Stage1Cfg(steps=2, device=None, **cfg), progress=False)
    assert first["device"] == HERE
    recorded = json.loads((out / "checkpoint" / "run.json").read_text())["recipe"]
    assert recorded["device"] is None
    # the device is where a run computes, not what it trains: an explicit one resumes the same run
    second = train_text(scenes, out, tiny_llm_dir, Stage1Cfg(steps=3, device="cpu", **cfg), progress=False)
    assert second["resumed_from"]["contrastive"] == 2 and second["steps_run"]["contrastive"] == 1
    assert second["device"] == "cpu"


def test_the_device_checks_stage1_loop_runs_here_and_resumes_exactly(tmp_path):
    """``bench/device_stage1.py`` is what a GPU session runs, with minutes to spare: here on the CPU with a tiny
    base, so that it cannot fail there for a reason a CPU shows. A resumed run equals the uninterrupted one."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    from device_stage1 import stage1_loop

    got = stage1_loop(device="cpu", shape="tiny", steps=4, cpu_steps=2, work=tmp_path)
    assert got["device"] == "cpu" and got["steps"] == 4
    assert got["resumed_from"] == {"mntp": 2, "contrastive": 2}  # killed after the half-way checkpoint
    assert got["resume_max_loss_diff"] == 0.0 and got["repeat_max_loss_diff"] == 0.0
    assert len(got["losses"]["resumed"]) == 2 + 4 and got["losses"]["full"] == got["losses"]["repeat"]
    assert got["cpu_max_loss_diff_first_steps"] == 0.0  # the same device: the same steps
    assert json.loads((tmp_path / "full" / "stage1.json").read_text())["steps_run"] == {"mntp": 2, "contrastive": 4}
    assert 0.0 <= got["val_caption_retrieval"][1] <= 1.0 and got["speedup_over_cpu"] > 0
