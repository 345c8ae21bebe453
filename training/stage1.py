"""Stage 1 of LLM2CLIP: caption-contrastive (CC) fine-tuning of the LLM text encoder (`llm2clip train text`).

Recipe (LLM2Vec, as LLM2CLIP uses it): the decoder LLM gets bidirectional attention and mean pooling
(``LLMEncoder``); optional MNTP (masked next-token prediction) adapts it to bidirectional attention;
then LoRA on the attention and MLP projections is trained with a supervised contrastive loss where two
captions of the same scene are positives and every other caption in the micro-batch is a negative.

Choices where the paper and LLM2Vec leave room:
- Views. Each scene offers its captions (long, short, any other) plus K paraphrases of its long caption,
  re-phrased once up front by the scene generator from ``item.meta`` (``paraphrase_long``); a micro-batch
  draws 2 distinct views per scene. Items without a scene graph use their own captions only; an item with
  fewer than 2 distinct texts has no positive pair and is left out. ``positives="long"`` keeps the short
  caption out of the views: with long/short pairs the loss asks the long caption's embedding to match a
  caption that names only the count and the classes, which rewards dropping every other fact (see
  docs/results/repro/FINDINGS.md).
- Hard negatives (``hard_negatives``): half of a micro-batch are generator near twins of the other half's
  scenes, one attribute of one object changed (``near_twin_graph``), two paraphrases each. Random scenes
  differ in many facts at once; a twin differs in one, so only an embedding that keeps it separates them.
- Gradient accumulation: each micro-batch is its own contrastive problem (its in-batch negatives only),
  the losses are averaged over the ``grad_accum`` micro-batches of an optimizer step. Gathering the
  negatives of all micro-batches would need GradCache-style caching of embeddings; on a CPU the simple
  form keeps memory flat and the negatives' count is set by ``batch_size``.
- Negatives that are the same text as the anchor (identical short captions of two scenes) are dropped
  from the denominator: identical inputs give identical embeddings, so they can only add noise.
- MNTP follows LLM2Vec: 20% of the tokens (never padding, never the first, which has no predecessor)
  are selected; of those 80% become the mask token, 10% a random token, 10% stay; the token at position
  i is predicted from the hidden state at position i - 1 by the model's own ``lm_head``, cross-entropy on
  the selected positions only. Llama-family tokenizers have no mask token: like LLM2Vec's default
  ("blank") we use "_" when the vocabulary has it, else the tokenizer's mask token, else padding.
  The MNTP LoRA is merged before the contrastive LoRA starts, as LLM2Vec does; a MNTP micro-batch holds
  the same 2 x batch_size texts a contrastive one does.
- The output is the base model class (e.g. ``LlamaModel``, no LM head): an encoder never needs the head.

Resuming: ``out/checkpoint/`` holds, per phase, the LoRA adapter (peft format), the optimizer, the step,
the torch RNG and the history, written every ``save_every`` steps and at the end of a phase; data order
and view choice are functions of (seed, step), so a rerun with the same ``out`` continues exactly where
the checkpoint stopped, and a rerun with a larger ``--steps`` extends a finished run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from llm2clip.data import Dataset, read_dataset
from llm2clip.errors import BundleError, DatasetError
from llm2clip.text import LLMEncoder, Tokenizer, bidirectional_mask

log = logging.getLogger(__name__)

FORMAT = "llm2clip-stage1"
SUMMARY = "stage1.json"
HISTORY = "history.json"
CHECKPOINT = "checkpoint"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja")
IGNORE = -100
# a rerun may change these without invalidating the checkpoint; anything else in the recipe must match
_FREE = ("steps", "save_every", "bf16", "grad_checkpointing")


@dataclass
class Stage1Cfg:
    steps: int = 1000  # contrastive optimizer steps
    mntp_steps: int = 0  # MNTP optimizer steps before it (0: none)
    batch_size: int = 16  # scenes per micro-batch: 2 x batch_size views, the contrastive problem's size
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 2e-4  # LLM2Vec's supervised contrastive learning rate (LoRA r 16)
    mntp_lr: float = 5e-5  # LLM2Vec's MNTP learning rate
    warmup_steps: int = 50  # linear warmup, then cosine to 0 (each phase)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    lora_r: int = 16
    lora_alpha: int = 32
    # LLM2Vec uses 0.05; on a CPU drawing the dropout masks costs ~25% of a step, and 2 views drawn among
    # long, short and paraphrased captions already vary the input
    lora_dropout: float = 0.0
    temperature: float = 0.05  # LLM2Vec's scale 20
    max_tokens: int = 512
    paraphrases: int = 2  # generator paraphrases of each long caption
    # which of an item's own captions are views: "all" (long with short, the paper's CC pairs) or "long"
    # (the long caption and its paraphrases only: no positive pair asks the long embedding to match a
    # caption that names fewer facts)
    positives: str = "all"
    # half of each micro-batch is a generator near twin of the other half (one attribute of one object
    # changed): its captions are negatives that differ from the scene's in a single fact
    hard_negatives: bool = False
    mntp_probability: float = 0.2
    seed: int = 0
    bf16: bool = True  # autocast on CPU (AMX) and GPU
    grad_checkpointing: bool = True
    save_every: int = 50
    lora_targets: tuple[str, ...] = field(default_factory=lambda: LORA_TARGETS)


# ---------------------------------------------------------------- losses


def supcon_loss(emb: torch.Tensor, labels: torch.Tensor, temperature: float,
                ignore: torch.Tensor | None = None) -> torch.Tensor:
    """Supervised contrastive loss (SupCon) over N views; views with the same label are positives.

    With two views per label it is the symmetric InfoNCE of SimCSE / LLM2Vec: each view must find its
    partner among the other 2B - 1 views. ``ignore`` (N, N) drops pairs from the negatives.
    """
    with torch.autocast(emb.device.type, enabled=False):  # bf16 logits / temperature would round the loss
        z = F.normalize(emb.float(), dim=-1)
        logits = z @ z.t() / temperature
    own = torch.eye(len(z), dtype=torch.bool, device=z.device)
    pos = (labels[:, None] == labels[None, :]) & ~own
    drop = own if ignore is None else own | (ignore & ~pos)
    logits = logits.masked_fill(drop, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    n_pos = pos.sum(dim=1)
    per_view = -log_prob.masked_fill(~pos, 0.0).sum(dim=1) / n_pos.clamp(min=1)
    return per_view[n_pos > 0].mean()


def mntp_mask(ids: torch.Tensor, attention_mask: torch.Tensor, mask_id: int, vocab_size: int,
              generator: torch.Generator, probability: float = 0.2, mask_frac: float = 0.8,
              random_frac: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) for MNTP: labels hold the original token at selected positions, -100 elsewhere.

    Position 0 is never selected (nothing precedes it to predict it from), nor is padding; a text with a
    candidate gets at least one selected token, so short captions teach something too.
    """
    cand = attention_mask.bool().clone()
    cand[:, 0] = False
    u = torch.rand(ids.shape, generator=generator)
    select = cand & (u < probability)
    # the candidate with the lowest draw stands in for rows where the draw selected nothing
    lowest = torch.where(cand, u, torch.full_like(u, 2.0)).argmin(dim=1, keepdim=True)
    fallback = torch.zeros_like(select).scatter_(1, lowest, True) & cand
    select |= fallback & ~select.any(dim=1, keepdim=True)
    v = torch.rand(ids.shape, generator=generator)
    inputs = ids.clone()
    inputs[select & (v < mask_frac)] = mask_id
    random_pos = select & (v >= mask_frac) & (v < mask_frac + random_frac)
    inputs[random_pos] = torch.randint(vocab_size, ids.shape, generator=generator)[random_pos]
    labels = torch.where(select, ids, torch.full_like(ids, IGNORE))
    return inputs, labels


def mntp_targets(hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states (M, H) that predict the selected tokens (M,): token i from the state at i - 1."""
    h, y = hidden[:, :-1], labels[:, 1:]
    keep = y != IGNORE
    return h[keep], y[keep]


def mask_token_id(folder: str | Path, tok: Tokenizer) -> int:
    cfg_file = Path(folder) / "tokenizer_config.json"
    raw = tok._tok
    if cfg_file.is_file():
        name = json.loads(cfg_file.read_text()).get("mask_token")
        if isinstance(name, dict):
            name = name.get("content")
        if name and raw.token_to_id(name) is not None:
            return int(raw.token_to_id(name))
    blank = raw.token_to_id("_")
    return int(blank) if blank is not None else tok.pad_id


def lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# ---------------------------------------------------------------- data


POSITIVES = ("all", "long")


def caption_pools(dataset: Dataset, paraphrases: int, seed: int, progress: bool = True,
                  positives: str = "all") -> list[list[str]]:
    """Distinct caption texts of every item: its own captions (all, or only the long one), then
    ``paraphrases`` re-phrasings of the long one."""
    from llm2clip.data import paraphrase_long

    if positives not in POSITIVES:
        raise DatasetError(f"unknown --positives {positives!r}: choose among {', '.join(POSITIVES)}")
    pools = []
    for i, item in enumerate(tqdm(dataset.items, desc="paraphrase captions", unit="item",
                                  disable=not progress or paraphrases == 0)):
        own = item.captions.values() if positives == "all" else [item.captions.get("long", "")]
        texts = list(dict.fromkeys(t for t in own if t.strip()))
        if paraphrases and "objects" in item.meta and "background" in item.meta:
            for k in range(paraphrases):
                para_seed = int(np.random.SeedSequence([seed, i, k]).generate_state(1)[0])
                text = paraphrase_long(item.meta, para_seed, avoid=texts)
                if text not in texts:
                    texts.append(text)
        pools.append(texts)
    return pools


def twin_pools(dataset: Dataset, seed: int, progress: bool = True) -> list[list[str]]:
    """Two generator captions of a near twin of every item (one attribute of one object changed); [] for an
    item without a scene graph."""
    from llm2clip.data import near_twin_graph, paraphrase_long

    pools = []
    for i, item in enumerate(tqdm(dataset.items, desc="near-twin captions", unit="item", disable=not progress)):
        if "objects" not in item.meta or "background" not in item.meta:
            pools.append([])
            continue
        state = np.random.SeedSequence([seed, i, 2**20]).generate_state(3)
        twin = near_twin_graph(item.meta, int(state[0]))
        first = paraphrase_long(twin, int(state[1]))
        pools.append([first, paraphrase_long(twin, int(state[2]), avoid=[first])])
    return pools


class ViewSampler:
    """Micro-batch m: which scenes (an epoch-wise permutation) and which 2 views of each; a function of m.

    With ``twins`` (one pool per item, aligned with ``pools``), a micro-batch holds batch_size // 2 scenes
    and, as further labels, their near twins: 2 views of each twin, negatives to everything else.
    """

    def __init__(self, pools: list[list[str]], batch_size: int, seed: int, stream: int,
                 twins: list[list[str]] | None = None) -> None:
        keep = [i for i, p in enumerate(pools) if len(p) >= 2 and (twins is None or len(twins[i]) >= 2)]
        self.pools = [pools[i] for i in keep]
        self.twins = None if twins is None else [twins[i] for i in keep]
        self.scenes = batch_size if twins is None else batch_size // 2
        if twins is not None and (batch_size < 2 or batch_size % 2):
            raise DatasetError(f"--hard-negatives needs an even --batch-size (got {batch_size}): half of it "
                               "are the twins of the other half")
        if len(self.pools) < max(2, self.scenes):
            raise DatasetError(f"{len(self.pools)} items have two distinct captions, fewer than --batch-size "
                               f"{batch_size}: use a larger dataset or a smaller batch")
        self.seed, self.stream = seed, stream
        self.per_epoch = len(self.pools) // self.scenes

    def __call__(self, m: int) -> tuple[list[str], torch.Tensor]:
        epoch, k = divmod(m, self.per_epoch)
        perm = np.random.default_rng([self.seed, self.stream, epoch]).permutation(len(self.pools))
        rng = np.random.default_rng([self.seed, self.stream, epoch, k, 1])
        texts, labels = [], []
        for j, p in enumerate(perm[k * self.scenes : (k + 1) * self.scenes]):
            groups = [self.pools[int(p)]] if self.twins is None else [self.pools[int(p)], self.twins[int(p)]]
            for g, pool in enumerate(groups):
                for v in rng.choice(len(pool), size=2, replace=False):
                    texts.append(pool[int(v)])
                    labels.append(len(groups) * j + g)
        return texts, torch.tensor(labels)


def _same_text(texts: list[str]) -> torch.Tensor:
    arr = np.asarray(texts, dtype=object)
    return torch.from_numpy(arr[:, None] == arr[None, :])


def _length_chunks(lengths: list[int]) -> list[list[int]]:
    """Indices sorted by length, cut once where the padded token count is smallest (long vs short captions)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    best, cut = len(order) * lengths[order[-1]], len(order)
    for c in range(1, len(order)):
        cost = c * lengths[order[c - 1]] + (len(order) - c) * lengths[order[-1]]
        if cost < best:
            best, cut = cost, c
    return [ch for ch in (order[:cut], order[cut:]) if ch]


# ---------------------------------------------------------------- models


def lora_target_names(model: nn.Module, preferred: tuple[str, ...] = LORA_TARGETS) -> list[str]:
    """Leaf names of the model's Linear layers that LoRA adapts: the attention and MLP projections.

    Architectures that name them otherwise (Falcon's query_key_value, ...) get every Linear but the LM head.
    """
    names = {name.rsplit(".", 1)[-1] for name, mod in model.named_modules()
             if isinstance(mod, nn.Linear) and "lm_head" not in name}
    chosen = sorted(names & set(preferred))
    return chosen or sorted(names)


def _add_lora(model: nn.Module, cfg: Stage1Cfg):
    from peft import LoraConfig, get_peft_model

    targets = lora_target_names(model, cfg.lora_targets)
    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, bias="none")
    with warnings.catch_warnings():
        # peft probes transformers' deprecated is_gradient_checkpointing; nothing for a user to act on
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, lcfg)


def _checkpointing(model: nn.Module, on: bool) -> None:
    # transformers 5.x renamed gradient_* to activation_* checkpointing; older 5.x only has the first
    if hasattr(model, "activation_checkpointing_enable"):
        if on:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.activation_checkpointing_disable()
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()


def _prepare(model: nn.Module, cfg: Stage1Cfg) -> None:
    model.train()
    if cfg.grad_checkpointing:
        _checkpointing(model, True)
        # peft freezes the embeddings; checkpointed blocks still need an input that carries grad
        model.enable_input_require_grads()


def _load_causal(base: Path, attn: str) -> nn.Module:
    from transformers import AutoModelForCausalLM

    cfg = json.loads((base / "config.json").read_text())
    if not any(a.endswith("ForCausalLM") for a in cfg.get("architectures") or []):
        log.warning("%s holds no LM head: MNTP predicts tokens with a freshly initialised (or tied) head", base)
    return AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32, attn_implementation=attn)


def _base_of(causal: nn.Module) -> nn.Module:
    return getattr(causal, causal.base_model_prefix)


# ---------------------------------------------------------------- checkpoints


def _save_phase(folder: Path, peft_model, opt: torch.optim.Optimizer, step: int, history: list, done: bool) -> None:
    tmp = folder.with_name(f".{folder.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    peft_model.save_pretrained(str(tmp))
    torch.save({"step": step, "optimizer": opt.state_dict(), "torch_rng": torch.get_rng_state(),
                "history": history, "done": done}, tmp / "state.pt")
    # swap in the new one only when complete: a run killed mid-save keeps the previous checkpoint
    old = folder.with_name(f".{folder.name}.old")
    if folder.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(folder, old)
    os.replace(tmp, folder)
    if old.exists():
        shutil.rmtree(old)


def _load_phase(folder: Path) -> dict[str, Any] | None:
    path = folder / "state.pt"
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    state["adapter"] = folder
    return state


def _load_adapter(peft_model, folder: Path) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    result = set_peft_model_state_dict(peft_model, load_file(str(folder / "adapter_model.safetensors")))
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise BundleError(f"the LoRA adapter in {folder} does not fit the model ({unexpected[:3]}): "
                           "choose another --out")


def _reached(state: dict[str, Any] | None, steps: int) -> bool:
    return steps == 0 or (state is not None and state["step"] >= steps)


def _check_recipe(old: dict[str, Any], new: dict[str, Any], out: Path) -> None:
    # a setting added after the run was made counts as its default there
    defaults = asdict(Stage1Cfg())
    old = {**{k: v for k, v in defaults.items() if k not in old and k != "lora_targets"}, **old}
    diff = sorted(k for k in set(old) | set(new) if k not in _FREE and old.get(k) != new.get(k))
    if diff:
        raise BundleError(f"{out} holds a stage-1 run with another recipe ({', '.join(diff)} differ): rerun with "
                           "the same settings to resume, or choose another --out")


# ---------------------------------------------------------------- training


def _encode(enc: LLMEncoder, tok: Tokenizer, texts: list[str]) -> torch.Tensor:
    ids, mask, _ = tok(texts)
    ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
    order, parts = [], []
    for chunk in _length_chunks(mask.sum(axis=1).tolist()):
        width = int(mask[chunk].sum(axis=1).max())
        idx = torch.tensor(chunk)
        order.append(idx)
        parts.append(enc(ids_t[idx, :width], mask_t[idx, :width]).float())
    return torch.cat(parts)[torch.argsort(torch.cat(order))]


def _mntp_loss(base: nn.Module, lm_head: nn.Module, tok: Tokenizer, texts: list[str], mask_id: int,
               vocab: int, gen: torch.Generator, probability: float) -> torch.Tensor:
    ids, mask, _ = tok(texts)
    inputs, labels = mntp_mask(torch.from_numpy(ids), torch.from_numpy(mask), mask_id, vocab, gen, probability)
    mask_t = torch.from_numpy(mask)
    total, count = torch.zeros(()), 0
    for chunk in _length_chunks(mask.sum(axis=1).tolist()):
        width = int(mask[chunk].sum(axis=1).max())
        idx = torch.tensor(chunk)
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32
        hidden = base(input_ids=inputs[idx, :width], attention_mask=bidirectional_mask(mask_t[idx, :width], dtype),
                      use_cache=False).last_hidden_state
        h, y = mntp_targets(hidden, labels[idx, :width])
        # the LM head only where a token is predicted: the vocabulary projection dominates otherwise
        total = total + F.cross_entropy(lm_head(h).float(), y, reduction="sum")
        count += len(y)
    return total / max(1, count)


def _run_phase(name: str, total: int, state: dict[str, Any] | None, peft_model, step_loss, folder: Path,
               cfg: Stage1Cfg, lr: float, views_per_step: int, progress: bool, out: Path,
               histories: dict[str, list]) -> int:
    """Optimizer steps ``state.step .. total`` of one phase; returns the number of steps run."""
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    step, history = 0, []
    if state is not None:
        _load_adapter(peft_model, state["adapter"])
        opt.load_state_dict(state["optimizer"])
        step, history = state["step"], state["history"]
        torch.set_rng_state(state["torch_rng"])
    histories[name] = history
    start = step
    if step >= total:
        return 0
    bar = tqdm(total=total, initial=step, desc=f"stage 1 {name}", unit="step", disable=not progress)
    while step < total:
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = lr * lr_factor(step, total, cfg.warmup_steps)
        opt.zero_grad(set_to_none=True)
        losses = []
        for a in range(cfg.grad_accum):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
                loss = step_loss(step * cfg.grad_accum + a)
            (loss / cfg.grad_accum).backward()
            losses.append(float(loss.detach()))
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
        opt.step()
        step += 1
        rate = views_per_step / (time.perf_counter() - t0)
        entry = {"step": step, "loss": round(float(np.mean(losses)), 5), "lr": opt.param_groups[0]["lr"],
                 "grad_norm": round(grad_norm, 4), "samples_s": round(rate, 2)}
        history.append(entry)
        bar.update(1)
        bar.set_postfix(loss=f"{entry['loss']:.4f}", samples_s=f"{rate:.1f}")
        if step % cfg.save_every == 0 or step == total:
            _save_phase(folder, peft_model, opt, step, history, done=step == total)
            (out / HISTORY).write_text(json.dumps(histories, indent=1))
    bar.close()
    return step - start


def _write_model(model: nn.Module, base: Path, out: Path, name: str) -> None:
    tmp = out / ".model.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    model.config._model_name_or_path = name
    model.save_pretrained(str(tmp))
    for old in out.iterdir():
        if old.is_file() and (old.suffix in {".safetensors", ".bin"} or old.name.endswith(".index.json")):
            old.unlink()
    for f in tmp.iterdir():
        os.replace(f, out / f.name)
    tmp.rmdir()
    for fname in TOKENIZER_FILES:
        if (base / fname).is_file():
            shutil.copy2(base / fname, out / fname)


def _summary(history: list[dict[str, Any]], total: int) -> dict[str, Any] | None:
    if not history:
        return None
    rates = [h["samples_s"] for h in history]
    k = max(1, min(10, len(history) // 5))
    return {"steps": total, "first_loss": round(float(np.mean([h["loss"] for h in history[:k]])), 5),
            "last_loss": round(float(np.mean([h["loss"] for h in history[-k:]])), 5),
            "samples_s": round(float(np.median(rates)), 2)}


def train_text(
    dataset: Dataset | str | Path,
    out: str | Path,
    base: str | Path | None = None,
    cfg: Stage1Cfg | None = None,
    val: Dataset | str | Path | None = None,
    progress: bool = True,
    attn: str = "sdpa",
) -> dict[str, Any]:
    """Run (or resume) stage 1 into ``out``: a Hugging Face model folder with the LoRA merged, + ``stage1.json``."""
    from training.caption_retrieval import caption_retrieval
    from training.embed import text_encoder_info

    cfg = cfg or Stage1Cfg()
    if cfg.batch_size < 2 and cfg.steps > 0:
        raise DatasetError("--batch-size must be at least 2: a contrastive problem needs negatives")
    if base is None:
        from llm2clip.defaults import smollm2_dir

        base = smollm2_dir()
    base = Path(base)
    out = Path(out)
    ds = dataset if isinstance(dataset, Dataset) else read_dataset(dataset)
    val_ds = None if val is None else val if isinstance(val, Dataset) else read_dataset(val)
    t_start = time.perf_counter()
    base_info = text_encoder_info(base)
    recipe = {**asdict(cfg), "lora_targets": list(cfg.lora_targets), "base": base_info["fingerprint"],
              "dataset": str(Path(ds.root).resolve()), "items": len(ds)}

    ckpt = out / CHECKPOINT
    run_file = ckpt / "run.json"
    run: dict[str, Any] = {}
    if run_file.is_file():
        run = json.loads(run_file.read_text())
        _check_recipe(run["recipe"], recipe, out)
    elif out.exists() and any(out.iterdir()):
        raise BundleError(f"{out} is not empty and holds no stage-1 checkpoint: choose an empty or new --out")
    ckpt.mkdir(parents=True, exist_ok=True)
    run["recipe"] = recipe
    run["base"] = base_info
    captions_file = ckpt / "captions.json"
    if captions_file.is_file():
        pools = json.loads(captions_file.read_text())
    else:
        pools = caption_pools(ds, cfg.paraphrases, cfg.seed, progress, cfg.positives)
        captions_file.write_text(json.dumps(pools))
    twins = None
    if cfg.hard_negatives:
        twins_file = ckpt / "twins.json"
        if twins_file.is_file():
            twins = json.loads(twins_file.read_text())
        else:
            twins = twin_pools(ds, cfg.seed, progress)
            twins_file.write_text(json.dumps(twins))
    if val_ds is not None and "val_before" not in run:
        run["val_before"] = caption_retrieval(base, val_ds, max_tokens=cfg.max_tokens, progress=progress)
    run_file.write_text(json.dumps(run, indent=2))

    torch.manual_seed(cfg.seed)
    tok = Tokenizer(base, cfg.max_tokens)
    views = 2 * cfg.batch_size * cfg.grad_accum
    histories: dict[str, list] = {"mntp": [], "contrastive": []}
    steps_run = {"mntp": 0, "contrastive": 0}
    mntp_state = _load_phase(ckpt / "mntp")
    cc_state = _load_phase(ckpt / "contrastive")
    if (out / SUMMARY).is_file() and _reached(mntp_state, cfg.mntp_steps) and _reached(cc_state, cfg.steps):
        log.info("%s is already trained for %d contrastive steps", out, cfg.steps)
        return json.loads((out / SUMMARY).read_text())

    if cfg.mntp_steps > 0:
        causal = _load_causal(base, attn)
        LLMEncoder(_base_of(causal))  # bidirectional attention for MNTP as well
        peft_model = _add_lora(causal, cfg)
        _prepare(causal, cfg)
        sampler = ViewSampler(pools, cfg.batch_size, cfg.seed, stream=1, twins=twins)
        mask_id = mask_token_id(base, tok)
        vocab = int(causal.config.vocab_size)
        gen = torch.Generator()
        base_model, lm_head = _base_of(causal), causal.get_output_embeddings()

        def mntp_step(m: int) -> torch.Tensor:
            gen.manual_seed(int(np.random.SeedSequence([cfg.seed, 2, m]).generate_state(1)[0]))
            return _mntp_loss(base_model, lm_head, tok, sampler(m)[0], mask_id, vocab, gen, cfg.mntp_probability)

        if cc_state is not None and (mntp_state is None or not mntp_state["done"]):
            raise BundleError(f"{ckpt} has contrastive training without a finished MNTP phase: choose another --out")
        steps_run["mntp"] = _run_phase("mntp", cfg.mntp_steps, mntp_state, peft_model, mntp_step, ckpt / "mntp", cfg,
                                       cfg.mntp_lr, views, progress, out, histories)
        merged = peft_model.merge_and_unload()
        _checkpointing(merged, False)
        model = _base_of(merged)
        merged.lm_head = None  # the encoder never needs it; frees the vocabulary projection if untied
    else:
        from transformers import AutoModel

        model = AutoModel.from_pretrained(str(base), dtype=torch.float32, attn_implementation=attn)

    enc = LLMEncoder(model)
    peft_model = _add_lora(model, cfg)
    _prepare(model, cfg)
    sampler = ViewSampler(pools, cfg.batch_size, cfg.seed, stream=0, twins=twins)

    def contrastive_step(m: int) -> torch.Tensor:
        texts, labels = sampler(m)
        return supcon_loss(_encode(enc, tok, texts), labels, cfg.temperature, _same_text(texts))

    steps_run["contrastive"] = _run_phase("contrastive", cfg.steps, cc_state, peft_model, contrastive_step,
                                          ckpt / "contrastive", cfg, cfg.lr, views, progress, out, histories)
    merged_model = peft_model.merge_and_unload()
    _checkpointing(merged_model, False)
    _write_model(merged_model.eval(), base, out, f"{base_info['name']}-llm2clip-cc")
    (out / HISTORY).write_text(json.dumps(histories, indent=1))

    val_after = None
    if val_ds is not None:
        val_after = caption_retrieval(out, val_ds, max_tokens=cfg.max_tokens, progress=progress)
    summary = {
        "format": FORMAT,
        "base": base_info,
        "recipe": {k: v for k, v in recipe.items() if k not in ("base", "dataset", "items")},
        "train": {"dataset": recipe["dataset"], "items": len(ds), "usable": sum(len(p) >= 2 for p in pools),
                  "views_per_item": round(float(np.mean([len(p) for p in pools])), 3)},
        "mntp": _summary(histories["mntp"], cfg.mntp_steps),
        "contrastive": _summary(histories["contrastive"], cfg.steps),
        "mask_token_id": mask_token_id(base, tok) if cfg.mntp_steps else None,
        "val": None if val_ds is None else {"dataset": str(val_ds.root), "before": run.get("val_before"),
                                            "after": val_after},
        "resumed_from": {"mntp": mntp_state["step"] if mntp_state else 0,
                         "contrastive": cc_state["step"] if cc_state else 0},
        "steps_run": steps_run,
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    (out / SUMMARY).write_text(json.dumps(summary, indent=2))
    return summary
