"""research.readout_probe: the pool trained on frozen maps by regression or by contrast, scored on twins."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from llm2clip.data import generate_scenes
from research import readout_probe as probe
from research.oracle_text_side import DIM


def test_each_loss_fits_vectors_that_the_maps_determine():
    torch.manual_seed(0)
    maps = torch.randn(256, 8, 3, 3)
    vectors = F.normalize(torch.relu(maps.flatten(1) @ torch.randn(72, DIM)), dim=-1)  # a function of the map
    for loss in probe.LOSSES:
        torch.manual_seed(0)
        before = probe.AttentionPool(8, 256, 4, 3, DIM)  # an untrained pool: chance
        pool, text = probe.train_pool(maps, vectors, loss, epochs=30, seed=0)
        hits, cos = [], []
        for model in (before, pool):
            with torch.no_grad():
                out = F.normalize(model(maps), dim=-1)
                txt = text(vectors) if model is pool else vectors[:, :out.shape[1]]
            hits.append(((out @ txt.T).argmax(1) == torch.arange(len(maps))).float().mean())  # own vector first
            cos.append((out * txt).sum(-1).mean())
        assert hits[1] > 0.15 and hits[1] > 10 * hits[0], (loss, hits)  # chance is 1/256
        if loss == "cosine":
            assert cos[1] > cos[0] + 0.2


@pytest.mark.parametrize("option", [["--loss", "mse"], ["--loss", ""], ["--depth", "13"], ["--split", "train"]])
def test_bad_options_are_refused_before_any_work(tmp_path, option, capsys):
    with pytest.raises(SystemExit) as exc:
        probe.main(["--repro", str(tmp_path / "none"), *option])
    assert exc.value.code == 2 and option[0] in capsys.readouterr().err


@pytest.mark.slow
def test_a_run_scores_both_losses_on_the_val_twins(tmp_path):
    repro = tmp_path / "repro"
    generate_scenes(repro / "data" / "train", 64, "train", 0, progress=False)
    generate_scenes(repro / "data" / "val", 8, "val", 1, progress=False)
    probe.main(["--repro", str(repro), "--depth", "1", "--epochs", "1", "--out", str(tmp_path / "r.json")])
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["val_scenes"] == 8 and result["depth"] == 1
    for loss in probe.LOSSES:
        scores = result[loss]
        assert set(scores) == {"t2i_r1", "i2t_r1", "twin_t2i", "twin_i2t"}
        assert all(0 <= v <= 1 for v in scores.values())
        assert scores["twin_t2i"] * 8 == pytest.approx(round(scores["twin_t2i"] * 8))  # 8 ordered twin pairs
