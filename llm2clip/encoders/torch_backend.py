"""PyTorch backend of the text encoder: the LLM (bidirectional, mean pooled), optionally its adapter.

What training uses (caption embeddings for stage 2, caption retrieval, the repro) and what a bundle's
``bf16`` variant serves, with SDPA attention. ``bf16`` here means the matmuls: every linear layer's weights
are stored in bf16 (no conversion per call) and run under autocast, while the embeddings, the norms and the
residual stream stay in float32. An all-bf16 model measured ~5% faster at batch 32 but turned some short
captions' embeddings (cosine to fp32 0.92 for the raw LLM, 0.79 after the adapter): the LLM's outlier
activations need the float32 residual stream. Mean pooling, the adapter and the normalisation run in
float32 whatever the precision.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llm2clip.encoders.base import DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_BATCH_TOKENS, TextBatch, TextEncoder
from llm2clip.tokenizer import Tokenizer, uses_special_tokens

log = logging.getLogger(__name__)

TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def torch_device(device: str | None = None) -> str:
    """"cuda" when asked or (None) when a CUDA device is present, else "cpu"."""
    import torch

    if device:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} asked for, but torch sees no CUDA device")
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class TorchTextCfg:
    """How a ``TorchTextEncoder`` runs: ``precision`` of the matmuls, ``device`` (None: CUDA when present),
    torch's intra-op ``threads`` (process-wide; None leaves torch's default), unit-length output
    (``normalize``), and the token-budget batching of ``encode``."""

    precision: str = "bf16"
    device: str | None = None
    threads: int | None = None
    normalize: bool = True
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE


class TorchTextEncoder(TextEncoder):
    """A Hugging Face LLM folder (or a loaded ``LLMEncoder``) as a ``TextEncoder``.

    ``adapter`` None: the output is the LLM's mean-pooled embedding (the stage-2 input), unit length only
    when ``normalize``. With an adapter: the joint-space embedding, always unit length, as the bundle's
    ONNX text encoder computes it.
    """

    backend = "torch"

    def __init__(self, llm: Any, tokenizer: Tokenizer, cfg: TorchTextCfg = TorchTextCfg(), *,
                 adapter: Any = None) -> None:
        import torch

        precision = cfg.precision
        if precision not in TORCH_DTYPES:
            raise ValueError(f"precision must be one of {sorted(TORCH_DTYPES)}, not {precision!r}")
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = torch_device(cfg.device)
        dtype = getattr(torch, TORCH_DTYPES[precision])
        if self.device == "cpu" and precision == "fp16":
            raise ValueError("fp16 is a GPU precision: use bf16 or fp32 on the CPU")
        self.llm = llm.to(device=self.device, dtype=torch.float32).eval()
        self.autocast = None if precision == "fp32" else dtype
        if self.autocast is not None:
            for module in self.llm.modules():
                if isinstance(module, torch.nn.Linear):
                    module.to(dtype)
        self.adapter = adapter.to(self.device).float().eval() if adapter is not None else None
        self.tokenizer = tokenizer
        self.precision = precision
        self.normalized = cfg.normalize or adapter is not None
        self.dim = int(adapter.proj.out_features) if adapter is not None else int(llm.dim)
        self.max_batch_tokens = cfg.max_batch_tokens
        self.max_batch_size = cfg.max_batch_size
        self.prefix: Any = None
        self._prefix_store: Any = None

    def share_prefix(self, store: Any) -> bool:
        """Start from ``store``'s states where it holds this model's first layers for a batch's texts, and
        keep them there where it does not (``llm2clip.encoders.prefix_states.PrefixStates``). False, and
        nothing shared, for a model without that prefix (an encoder, or fewer layers) or one whose layers,
        run from the stored states, do not give its own embedding back (checked on a probe sequence)."""
        import torch

        prefix = store.for_model(self.llm.model, self.precision)
        if prefix is None:
            return False
        probe = (torch.arange(9, device=self.device) * 7 + 3)[None] % int(self.llm.model.config.vocab_size)
        mask = torch.ones_like(probe)
        with torch.inference_mode(), self._autocast():
            with self.llm.capture(store.layers) as kept:
                full = self.llm(probe, mask).float()
            split = self.llm.forward_from(kept.states, mask, store.layers).float()
        if not torch.allclose(full, split, rtol=1e-3, atol=1e-4):
            log.warning("%s: its layers from %d on do not give its embedding back from the stored states; "
                        "not sharing them", type(self.llm.model).__name__, store.layers)
            return False
        self.prefix, self._prefix_store = prefix, store
        return True

    def _autocast(self) -> Any:
        import torch

        device_type = "cuda" if self.device.startswith("cuda") else "cpu"
        return torch.autocast(device_type, dtype=self.autocast or torch.float32, enabled=self.autocast is not None)

    @classmethod
    def from_folder(cls, folder: str | Path, max_tokens: int = 512, *, precision: str = "bf16",
                    normalize: bool = True, device: str | None = None, adapter: Any = None,
                    **kwargs: Any) -> TorchTextEncoder:
        """The LLM of a Hugging Face folder with its own tokenizer (SDPA attention)."""
        from llm2clip.text import LLMEncoder

        llm = LLMEncoder.from_pretrained(folder, attn="sdpa")
        tok = Tokenizer(folder, max_tokens, add_special_tokens=uses_special_tokens(folder))
        cfg = TorchTextCfg(precision=precision, device=device, normalize=normalize, **kwargs)
        return cls(llm, tok, cfg, adapter=adapter)

    # sequence lengths are padded up to a multiple of this: oneDNN builds its bf16 matmul kernels per shape,
    # measured 10-80 ms on the first call of every new length, so queries of any length meet a few dozen
    # shapes, warmed at startup, instead of hundreds (padding is masked: the embedding does not change)
    pad_multiple = 16

    def warmup(self) -> None:
        """One call per padded length up to 256 tokens, so single queries find their kernels built."""
        for length in range(self.pad_multiple, 257, self.pad_multiple):
            ids = np.full((1, length), self.pad_id, dtype=np.int64)
            self.encode_tokens(TextBatch(ids, np.ones_like(ids), np.zeros(1, bool)))

    def encode_tokens(self, batch: TextBatch) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        extra = -batch.input_ids.shape[1] % self.pad_multiple
        if extra:
            pad = np.full((batch.input_ids.shape[0], extra), self.pad_id, dtype=np.int64)
            batch = TextBatch(np.concatenate([batch.input_ids, pad], axis=1),
                              np.concatenate([batch.attention_mask, np.zeros_like(pad)], axis=1), batch.truncated)

        with torch.inference_mode():
            ids = torch.from_numpy(batch.input_ids).to(self.device)
            mask = torch.from_numpy(batch.attention_mask).to(self.device)
            with self._autocast():
                out = (self.llm(ids, mask) if self.prefix is None else self._through_prefix(batch, ids, mask)).float()
            if self.adapter is not None:
                out = self.adapter(out)
            if self.normalized:
                out = F.normalize(out.float(), dim=-1)
            return out.float().cpu().numpy()

    def _through_prefix(self, batch: TextBatch, ids: Any, mask: Any) -> Any:
        """The LLM's output for a batch, from the stored states of its first layers when all its texts have
        them; otherwise the whole model, keeping those states."""
        import torch

        from llm2clip.encoders.prefix_states import sequence_key

        real = batch.attention_mask.astype(bool)
        keys = [sequence_key(row[keep]) for row, keep in zip(batch.input_ids, real, strict=True)]
        layers, found = self._prefix_store.layers, self.prefix.get(keys)
        if found is not None:
            states = torch.zeros(*ids.shape, self.llm.dim, dtype=torch.float32, device=self.device)
            for i, rows in enumerate(found):
                states[i, torch.from_numpy(real[i]).to(self.device)] = torch.from_numpy(rows).to(self.device)
            self._prefix_store.reused += len(keys)
            return self.llm.forward_from(states, mask, layers)
        with self.llm.capture(layers) as kept:
            out = self.llm(ids, mask)
        hidden = kept.states.float().cpu().numpy()
        self._prefix_store.stored += self.prefix.put([(k, hidden[i][real[i]]) for i, k in enumerate(keys)])
        return out

    @classmethod
    def from_bundle(cls, bundle: Any, precision: str = "bf16", *, device: str | None = None,
                    **kwargs: Any) -> TorchTextEncoder:
        """A bundle's torch variant: its LLM folder (weights in ``precision``) and adapter, the bundle's
        tokenizer. Unit embeddings in the joint space, as the bundle's ONNX text encoders give."""
        import torch
        from safetensors.torch import load_file
        from transformers import AutoModel

        from llm2clip.adapter import Adapter
        from llm2clip.config import ModelCfg
        from llm2clip.encoders.onnx import bundle_tokenizer
        from llm2clip.text import LLMEncoder

        variant = bundle.text_variants[precision]
        folder = bundle.path / variant["file"]
        # float32 on load (the bf16 linear weights convert exactly); __init__ puts the linears back in bf16
        model = AutoModel.from_pretrained(str(folder), dtype=torch.float32, attn_implementation="sdpa")
        model_cfg = ModelCfg.from_dict(bundle.manifest["model"])
        adapter = Adapter(model_cfg.adapter, model_cfg.embed_dim)
        adapter.load_state_dict(load_file(str(folder / "adapter.safetensors")))
        cfg = TorchTextCfg(precision=precision, device=device, normalize=True, **kwargs)
        return cls(LLMEncoder(model.eval()), bundle_tokenizer(bundle), cfg, adapter=adapter)
