"""A stage-1 LoRA as a small file that ships, and the text encoder it makes on another machine.

A stage-1 run (`llm2clip train text`) writes the base LLM with its contrastive LoRA merged: a full copy of the
model, 540 MB for SmolLM2-135M in float32. The LoRA alone is ~4.9M numbers. ``export_adapter`` writes it in
bf16 (~10 MB, peft's format) with a card (``adapter.json``): the base's fingerprint, the recipe, what it was
trained and validated on, and the sha256 of the weights. ``merged_text_encoder`` merges it into the base once
per machine and caches the folder, so that ``train embed`` and ``export`` read it as any other text encoder.

The bf16 rounding of the LoRA factors changes the merged weights slightly; the card records the cosine
between the embeddings of the exported adapter and of the run's own merged model on validation captions,
measured when it was exported (``check``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from llm2clip.errors import BundleError
from llm2clip.hashing import sha256_file

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
CARD = "adapter.json"
FORMAT = 1


def _scrub(value: Any) -> Any:
    """``value`` without the training machine's folders: "path" keys dropped, "dataset" paths cut to their name."""
    if isinstance(value, dict):
        return {k: Path(v).name if k == "dataset" and isinstance(v, str) else _scrub(v)
                for k, v in value.items() if k != "path"}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def _readable(folder: Path) -> None:
    """mkdtemp makes a folder only its owner can read: an adapter ships in a package, a merge is shared."""
    folder.chmod(0o755)
    for f in folder.iterdir():
        f.chmod(0o644)


def export_adapter(run: str | Path, out: str | Path, name: str) -> dict[str, Any]:
    """The contrastive LoRA of the finished stage-1 run in ``run`` as a bf16 adapter folder ``out``; -> its card."""
    from safetensors.torch import load_file, save_file

    run, out = Path(run), Path(out)
    summary_path = run / "stage1.json"
    src = run / "checkpoint" / "contrastive"
    if not summary_path.is_file() or not (src / WEIGHTS).is_file():
        raise BundleError(f"{run} holds no finished stage-1 run (stage1.json and checkpoint/contrastive/): "
                          "run `llm2clip train text` to the end first")
    summary = json.loads(summary_path.read_text())
    recipe = summary["recipe"]
    if recipe.get("mntp_steps", 0):
        raise BundleError("this run merged an MNTP LoRA before the contrastive one, so the contrastive adapter "
                          "alone does not make its text encoder: export a run without --mntp-steps")
    state = {k: v.to(torch.bfloat16).contiguous() for k, v in load_file(str(src / WEIGHTS)).items()}
    config = json.loads((src / CONFIG).read_text())
    # the run's config names the base by its folder on the training machine: name it by what it is instead
    config["base_model_name_or_path"] = summary["base"]["name"]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
        (tmp / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        val = summary.get("val") or {}
        card = _scrub({
            "format": FORMAT,
            "name": name,
            "base": {"name": summary["base"]["name"], "fingerprint": summary["base"]["fingerprint"]},
            "recipe": recipe,
            "train": {"items": summary["train"]["items"], "usable": summary["train"].get("usable"),
                      "dataset": Path(summary["train"]["dataset"]).name},
            "contrastive": summary.get("contrastive"),
            "val": _scrub(val) or None,
            "params": int(sum(v.numel() for v in state.values())),
            "sha256": sha256_file(tmp / WEIGHTS),
        })
        (tmp / CARD).write_text(json.dumps(card, indent=2) + "\n")
        _readable(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return card


def check_adapter(adapter: str | Path, run: str | Path, texts: list[str], cache: str | Path | None = None,
                  base: str | Path | None = None) -> dict[str, float]:
    """Cosines between the embeddings of ``texts`` by the run's own merged model and by the adapter merged
    into the base (float32 both; min and mean); written into the adapter's card as ``check``."""
    import numpy as np

    from llm2clip.encoders.torch_backend import TorchTextEncoder

    merged = merged_text_encoder(adapter, base=base, cache=cache)
    embs = []
    for folder in (Path(run), merged):
        enc = TorchTextEncoder.from_folder(folder, 512, precision="fp32", normalize=True)
        embs.append(enc.encode(texts))
        del enc
    cos = np.sum(embs[0] * embs[1], axis=1)
    check = {"texts": len(texts), "min_cosine": round(float(cos.min()), 6), "mean_cosine": round(float(cos.mean()), 6)}
    path = Path(adapter) / CARD
    card = json.loads(path.read_text())
    card["check"] = check
    path.write_text(json.dumps(card, indent=2) + "\n")
    return check


def read_card(adapter: str | Path) -> dict[str, Any]:
    """The card of an adapter folder, after checking that its weights are the ones it describes."""
    adapter = Path(adapter)
    path = adapter / CARD
    if not path.is_file() or not (adapter / WEIGHTS).is_file():
        raise BundleError(f"{adapter} is not a stage-1 adapter (no {CARD} and {WEIGHTS}): make one with "
                          "`llm2clip train adapter`")
    card = json.loads(path.read_text())
    if card.get("format") != FORMAT:
        raise BundleError(f"{adapter} has adapter format {card.get('format')}; this code reads {FORMAT}")
    if sha256_file(adapter / WEIGHTS) != card["sha256"]:
        raise BundleError(f"{adapter / WEIGHTS} does not match the sha256 in its card: the file is damaged; "
                          "reinstall the package or export the adapter again")
    return card


def merged_text_encoder(adapter: str | Path, base: str | Path | None = None,
                        cache: str | Path | None = None) -> Path:
    """A Hugging Face folder of ``base`` (default: the offline SmolLM2) with the adapter merged, built once and
    cached under ``cache`` (default: the project's cache folder) by the adapter's sha256."""
    from llm2clip.defaults import cache_dir, smollm2_dir
    from training.embed import text_encoder_info
    from training.stage1.checkpoint import write_model
    from training.stage1.lora import load_encoder_base

    adapter = Path(adapter)
    card = read_card(adapter)
    target = Path(cache or cache_dir()) / f"{card['name']}-{card['sha256'][:16]}"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    base = Path(base) if base is not None else smollm2_dir()
    info = text_encoder_info(base)
    if info["fingerprint"] != card["base"]["fingerprint"]:
        raise BundleError(f"the adapter {card['name']} was trained on {card['base']['name']} "
                          f"({card['base']['fingerprint'][:12]}), not on {base} ({info['fingerprint'][:12]}): "
                          "give the base it was trained on")
    from peft import PeftModel

    model = load_encoder_base(base, "eager")
    with warnings.catch_warnings():
        # peft probes transformers' deprecated is_gradient_checkpointing; nothing for a user to act on
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        write_model(merged.eval(), base, tmp, f"{card['base']['name']}-{card['name']}")
        _readable(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)  # a killed merge never leaves a half folder under the final name
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return target
