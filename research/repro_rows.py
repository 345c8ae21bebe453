"""One row of the reproduction at one training seed: its text encoder (stage 1 when it has one), stage 2, the
exported bundle. Every step is cached in a folder of its own, so that a rerun (or one with more seeds) continues.

Layout under the run's folder ``out``:
  stage1/<variant>-<steps>[-top<n>]/seed-<k>  a stage-1 run (Hugging Face folder + stage1.json)
  embeddings/<row>[/seed-<k>]            frozen caption embeddings (a stage-1 row's differ per seed)
  <row>/seed-<k>/{ckpt,bundle}           stage 2 and its export; val.json / eval.json: its val / test scores
  token_cache/                           a locked vision prefix's tokens of the train images, shared by all rows
where <row> is a row's folder key: clip77, minilm77, minilm, llm_nocc, or llm_cc-<variant>-<steps>[-top<n>].
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from llm2clip.config import AdapterCfg, ClipTextCfg, TextCfg
from llm2clip.data import Dataset
from llm2clip.defaults import minilm_dir, smollm2_dir
from llm2clip.encoders.prefix_states import PrefixStates
from llm2clip.errors import LLM2CLIPError
from research.repro_config import STAGE1_VARIANTS, ReproCfg, stage2_cfg, vision_cfg
from research.repro_scoring import RawEncoders
from training.clip import Stage2Run, default_model_cfg, train_clip
from training.config import EmbedCfg, ExportCfg
from training.embed import embed_captions
from training.export import export_checkpoint
from training.stage1.config import Stage1Cfg
from training.stage1.loop import Run
from training.stage1.train import train_text_run

STAGE2_SUMMARY = "stage2.json"  # in a row's seed folder: stage 2's steps, final loss and seconds
STAGE1_TIMED_APART = "stage1_apart"  # in STAGE2_SUMMARY: its seconds leave out stage 1 (timed in stage1.json)
CLIP_CONTEXT = 77  # CLIP's text context: clip77's tower and minilm77's cut


def say(msg: str) -> None:
    sys.stderr.write(f"[repro] {msg}\n")
    sys.stderr.flush()


@dataclass(frozen=True)
class Candidate:
    """A stage-1 recipe (a name of ``STAGE1_VARIANTS``) trained for ``steps`` contrastive steps, with LoRA on the
    top ``lora_layers`` layers of the LLM (0: every layer)."""

    variant: str
    steps: int
    lora_layers: int = 0

    @property
    def folder(self) -> str:
        """``<variant>-<steps>``, with ``-top<n>`` when LoRA is on the top n layers only: what its caches read."""
        return f"{self.variant}-{self.steps}" + (f"-top{self.lora_layers}" if self.lora_layers else "")

    @property
    def key(self) -> str:
        return f"llm_cc-{self.folder}"

    @property
    def label(self) -> str:
        top = f", LoRA on the top {self.lora_layers} layers" if self.lora_layers else ""
        return f"llm_cc:{self.variant} ({self.steps} steps{top})"


@dataclass(frozen=True)
class RowSpec:
    """What a row is: its folder key, its frozen text encoder ("minilm", "smollm2"; None for clip77's tower
    trained jointly), where captions are cut, and its stage-1 recipe if it has one."""

    key: str
    encoder: str | None
    max_tokens: int
    stage1: Candidate | None = None


def row_spec(name: str, cfg: ReproCfg, chosen: Candidate | None = None) -> RowSpec:
    """The spec of report row ``name``; ``llm_cc`` is the ``chosen`` candidate (research/selection.py)."""
    fixed = {"clip77": RowSpec("clip77", None, CLIP_CONTEXT),
             "minilm77": RowSpec("minilm77", "minilm", CLIP_CONTEXT),
             "minilm": RowSpec("minilm", "minilm", TextCfg.max_tokens),
             "llm_nocc": RowSpec("llm_nocc", "smollm2", TextCfg.max_tokens)}
    if name in fixed:
        return fixed[name]
    if name == "llm_cc":
        if chosen is None:
            raise LLM2CLIPError("llm_cc is the stage-1 recipe chosen on the val split: choose it first")
        return candidate_spec(chosen)
    variant = name.removeprefix("llm_cc:")
    if not name.startswith("llm_cc:") or variant not in STAGE1_VARIANTS:
        raise LLM2CLIPError(f"unknown row {name!r}")
    return candidate_spec(Candidate(variant, cfg.stage1_steps, cfg.stage1_lora_layers))


def candidate_spec(c: Candidate) -> RowSpec:
    return RowSpec(c.key, "smollm2", TextCfg.max_tokens, c)


def stage1_cfg(cfg: ReproCfg, c: Candidate, seed: int) -> Stage1Cfg:
    """Stage 1 of candidate ``c`` at training seed ``seed``: only the recipe's own settings differ between rows."""
    recipe = STAGE1_VARIANTS[c.variant]
    return Stage1Cfg(steps=c.steps, mntp_steps=cfg.stage1_mntp_steps if recipe["mntp"] else 0,
                     batch_size=cfg.stage1_batch, paraphrases=cfg.stage1_paraphrases,
                     positives=recipe["positives"], hard_negatives=recipe["hard_negatives"], seed=seed,
                     other_words=recipe.get("other_words", 0), alt_views=recipe.get("alt_views", 0),
                     warmup_steps=max(1, c.steps // 10), lora_layers=c.lora_layers,
                     # SmolLM2 at 8 scenes (+ twins) holds its activations in ~6 GB: recomputing them
                     # would cost ~30% more time for memory this machine has
                     grad_checkpointing=False)


def embeddings_dir(out: Path, spec: RowSpec, k: int) -> Path:
    """Where a run in ``out`` keeps row ``spec``'s train caption embeddings (a stage-1 row: one per seed)."""
    base = out / "embeddings" / spec.key
    return base / f"seed-{k}" if spec.stage1 is not None else base


@dataclass
class Work:
    """What every row and seed of one invocation shares."""

    out: Path
    cfg: ReproCfg
    train: Dataset
    val: Dataset  # stage 1's held-out caption retrieval
    # the states of SmolLM2's layers below stage 1's LoRA, shared by the base and every stage-1 model
    prefix: PrefixStates | None = field(init=False)
    # the frozen text encoders' vectors of the test captions: each row, seed and raw probe embeds a text once
    raw: RawEncoders = field(init=False)

    def __post_init__(self) -> None:
        self.prefix = shared_prefix(self.out, self.cfg)
        self.raw = RawEncoders(self.prefix)

    def seed(self, k: int) -> int:
        return self.cfg.seed + k

    def row_dir(self, spec: RowSpec, k: int) -> Path:
        return self.out / spec.key / f"seed-{k}"

    def stage1_dir(self, c: Candidate, k: int) -> Path:
        return self.out / "stage1" / c.folder / f"seed-{k}"

    @property
    def token_cache(self) -> Path:
        """One cache folder for the run: a cache file is named by what its tokens depend on, so every row, seed
        and candidate with the same locked prefix reads the same file (``training.token_cache``)."""
        return self.out / "token_cache"

    def embeddings_dir(self, spec: RowSpec, k: int) -> Path:
        return embeddings_dir(self.out, spec, k)


def shared_prefix(out: Path, cfg: ReproCfg) -> PrefixStates | None:
    """With stage 1's LoRA on SmolLM2's top layers only, the layers below are the base's in every stage-1 model:
    their states are computed once per caption for the run (DIR/prefix_states), by the first SmolLM2 to embed it."""
    layers = json.loads((smollm2_dir() / "config.json").read_text())["num_hidden_layers"]
    if not 0 < cfg.stage1_lora_layers < layers:
        return None
    return PrefixStates(out / "prefix_states", layers - cfg.stage1_lora_layers)


def text_encoder(work: Work, spec: RowSpec, k: int) -> Path | None:
    """The frozen text encoder's folder of ``spec`` at seed ``k``; runs (or continues) stage 1 for a stage-1 row."""
    if spec.encoder is None:
        return None
    if spec.stage1 is None:
        return minilm_dir() if spec.encoder == "minilm" else smollm2_dir()
    folder = work.stage1_dir(spec.stage1, k)
    # finished: not even the base's fingerprint to hash again (a stage1.json carried alone by
    # research.repro_records, without the model, is a record: stage 1 runs and writes both)
    if (folder / "stage1.json").is_file() and (folder / "config.json").is_file():
        return folder
    if (folder / "stage1.json").is_file() and not (folder / "checkpoint").exists():
        raise LLM2CLIPError(f"{spec.stage1.label}, seed {k}: {folder} holds the records of a stage-1 run but not its "
                            "model, which this run needs (to score the raw text side or train stage 2). Run where "
                            "the model is, or move the folder away to train stage 1 again")
    say(f"stage 1: {spec.stage1.label}, seed {k}")
    run = Run(stage1_cfg(work.cfg, spec.stage1, work.seed(k)), folder, prefix=work.prefix)
    train_text_run(run, work.train, smollm2_dir(), val=work.val)
    return folder


def embeddings(work: Work, spec: RowSpec, k: int) -> Path:
    """The row's frozen caption embeddings of the train split, cut at its ``max_tokens`` (cached)."""
    encoder = text_encoder(work, spec, k)
    assert encoder is not None
    emb = work.embeddings_dir(spec, k)
    embed_captions(work.train, encoder, emb, EmbedCfg(max_tokens=spec.max_tokens), prefix=work.prefix)
    return emb


def train_bundle(work: Work, spec: RowSpec, k: int) -> Path:
    """Stage 2 of one row at seed ``k`` and its fp32 bundle (cached): ``<row>/seed-<k>/bundle``."""
    cfg, rdir = work.cfg, work.row_dir(spec, k)
    bundle = rdir / "bundle"
    if (bundle / "manifest.json").is_file():
        return bundle
    # stage 1 first, outside this pass's clock: its own time is in its stage1.json
    text_encoder(work, spec, k)
    t0 = time.perf_counter()
    tcfg = replace(stage2_cfg(cfg, len(work.train)), seed=work.seed(k))
    if spec.encoder is None:
        # the adapter's input width is unused: the text tower replaces the LLM and the adapter
        mcfg = default_model_cfg(cfg.embed_dim, AdapterCfg.in_dim, cfg.image_size, spec.key, spec.max_tokens,
                                 vision_cfg(cfg))
        mcfg.text_tower = ClipTextCfg(context=spec.max_tokens, width=cfg.clip77_width, layers=cfg.clip77_layers,
                                      heads=max(1, cfg.clip77_width // 64))
        say(f"{spec.key} seed {k}: stage 2 (text tower trained jointly)")
        summary = train_clip(Stage2Run(work.train, None, rdir / "ckpt", model_cfg=mcfg,
                                       tokenizer_dir=smollm2_dir(), token_cache=work.token_cache), tcfg)
    else:
        emb = embeddings(work, spec, k)
        from training.embed import CaptionEmbeddings

        # the model's max_tokens is what the exported bundle cuts captions at when it serves
        mcfg = default_model_cfg(cfg.embed_dim, CaptionEmbeddings(emb).dim, cfg.image_size, spec.key,
                                 spec.max_tokens, vision_cfg(cfg))
        say(f"{spec.key} seed {k}: stage 2")
        summary = train_clip(Stage2Run(work.train, emb, rdir / "ckpt", model_cfg=mcfg,
                                       token_cache=work.token_cache), tcfg)
    # fp32 only: the reference the scoring path was checked against (research/repro_scoring.py); a frozen
    # encoder's row is scored from its bf16 vectors through the adapter, clip77 through this graph
    export_checkpoint(rdir / "ckpt", bundle, cfg=ExportCfg(precisions=("fp32",)))
    final = (summary["history"] or [{}])[-1].get("loss")
    # the first, uninterrupted pass's time (embeddings when this seed made them, stage 2, export), stage 1 not
    # included (STAGE1_TIMED_APART: records written before it was timed apart may include it)
    (rdir / STAGE2_SUMMARY).write_text(json.dumps({"steps": summary["steps"], "final_loss": final,
                                                   "seconds": round(time.perf_counter() - t0, 1),
                                                   STAGE1_TIMED_APART: True}))
    return bundle
