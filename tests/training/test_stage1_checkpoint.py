"""Stage-1 checkpoints: what a rerun resumes from, and which recipe changes it accepts."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch
from torch import nn

from llm2clip.errors import BundleError
from training.stage1.checkpoint import check_recipe, load_adapter, load_phase, reached, save_phase
from training.stage1.config import LORA_TARGETS, Stage1Cfg


def test_recipe_check_reads_settings_added_later_as_their_defaults(tmp_path):
    new = {**asdict(Stage1Cfg()), "lora_targets": list(LORA_TARGETS)}
    old = {k: v for k, v in new.items() if k not in ("positives", "hard_negatives")}
    check_recipe(old, new, tmp_path)  # a run made before the settings existed resumes
    with pytest.raises(BundleError, match="positives"):
        check_recipe(old, {**new, "positives": "long"}, tmp_path)
    with pytest.raises(BundleError, match="hard_negatives"):
        check_recipe(old, {**new, "hard_negatives": True}, tmp_path)


def test_recipe_check_lets_steps_and_speed_settings_change(tmp_path):
    old = {**asdict(Stage1Cfg()), "lora_targets": list(LORA_TARGETS)}
    check_recipe(old, {**old, "steps": 5000, "save_every": 7, "bf16": False, "grad_checkpointing": False}, tmp_path)
    with pytest.raises(BundleError, match="lr, seed"):
        check_recipe(old, {**old, "lr": 1.0, "seed": 1}, tmp_path)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def _peft(seed: int):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    return get_peft_model(_Net(), LoraConfig(r=2, lora_alpha=4, target_modules=["proj"], init_lora_weights=False))


def test_a_saved_phase_restores_adapter_optimizer_and_rng(tmp_path):
    folder = tmp_path / "contrastive"
    assert load_phase(folder) is None and not reached(None, 3) and reached(None, 0)
    model = _peft(0)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(torch.ones(1, 4)).sum().backward()
    opt.step()
    history = [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}]
    torch.manual_seed(7)
    torch.rand(3)
    after_second_save = torch.rand(3)
    torch.manual_seed(7)
    save_phase(folder, model, opt, 2, history, done=False)
    torch.rand(3)
    save_phase(folder, model, opt, 2, history, done=True)  # over an earlier save: replaced whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["contrastive"]

    state = load_phase(folder)
    assert state["step"] == 2 and state["history"] == history and state["done"] is True
    assert reached(state, 2) and not reached(state, 3)
    torch.set_rng_state(state["torch_rng"])
    assert torch.equal(torch.rand(3), after_second_save)  # the RNG goes on as it was at the second save

    other = _peft(1)
    lora = [n for n, _ in model.named_parameters() if "lora_" in n]
    assert any(not torch.equal(model.get_parameter(n), other.get_parameter(n)) for n in lora)
    load_adapter(other, state["adapter"])
    assert all(torch.equal(model.get_parameter(n), other.get_parameter(n)) for n in lora)
    restored = torch.optim.AdamW([p for p in other.parameters() if p.requires_grad], lr=0.1)
    restored.load_state_dict(state["optimizer"])
    assert restored.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"] == 1
