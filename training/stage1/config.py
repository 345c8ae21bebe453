"""Stage 1's recipe: every setting of a run, and the names of the files it writes."""

from __future__ import annotations

from dataclasses import dataclass, field

FORMAT = "llm2clip-stage1"
SUMMARY = "stage1.json"
HISTORY = "history.json"
CHECKPOINT = "checkpoint"
PHASES = ("mntp", "contrastive")
POSITIVES = ("all", "long")
ATTENTIONS = ("sdpa", "eager")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


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
    # views in other words: this many more views of each scene (and of its twin), each a view of the long style
    # with its class, size, orientation and texture words swapped for WordNet synonyms with probability 1/2
    # (``llm2clip.data.captions.lexical.relexicalise``, the lexicon stage 2's ``--other-words`` uses)
    other_words: int = 0
    # views in the alt grammar: this many more views of each scene (and of its twin), each its long caption as the
    # alt grammar writes it (``llm2clip.data.captions.alt``: the facts in other sentence orders, constructions and
    # synonyms; the grammar stage 2's ``--alt-captions`` uses)
    alt_views: int = 0
    mntp_probability: float = 0.2
    seed: int = 0
    bf16: bool = True  # autocast on CPU (AMX) and GPU
    grad_checkpointing: bool = True
    save_every: int = 50
    lora_targets: tuple[str, ...] = field(default_factory=lambda: LORA_TARGETS)
    # LoRA on the top ``lora_layers`` transformer layers only (0: every layer). The layers below it get no
    # gradient, so the backward pass stops at the lowest adapted layer: fewer layers, a shorter backward
    lora_layers: int = 0
    # speed settings that do not change what is trained (``checkpoint.FREE``):
    # the frozen projections' weights held in bf16 while training (with ``bf16`` autocast, which rounds them
    # to bf16 on every call anyway); the float32 weights come back before the LoRA is merged
    bf16_weights: bool = True
    # a micro-batch's texts run through the model in up to this many calls of similar length (sorted, cut
    # where padding is least): fewer padding tokens for the matmuls; 2 is the original long/short cut
    length_buckets: int = 4
    # each decoder layer's norm output rounded to bf16 once for the projections that read it, not by autocast
    # in each of them (lora.cast_norms_once): the same forward, the backward's sums of its gradients in bf16
    cast_once: bool = True
    # the attention kernel: "eager" (matmuls and a float32 softmax, as transformers writes it out) or "sdpa"
    # (torch's fused CPU kernel, whose backward took ~26% of a single-threaded step in a profile; eager's
    # steps measured 1.23x faster, bench/RESULTS.md)
    attention: str = "eager"
    # AdamW as one fused kernel over the LoRA tensors rather than a loop of small ops per tensor
    fused_adam: bool = True
    # the torch device the model, its batches and its loss run on: "cpu", "cuda" or "cuda:N"; None: CUDA when
    # torch sees a device, else the CPU. The validation's caption retrieval runs there too
    device: str | None = None
