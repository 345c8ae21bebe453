"""Export a stage-2 checkpoint (+ its frozen LLM) to a model bundle of ONNX encoders."""

from __future__ import annotations

import copy
import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from llm2clip import bundle as B
from llm2clip.errors import BundleError
from llm2clip.model import LLM2CLIP, ClipTextEncoderModule, ImageEncoderModule, TextEncoderModule
from llm2clip.text import LLMEncoder, Tokenizer
from llm2clip.tokenizer import uses_special_tokens
from training.checkpoint import load_checkpoint
from training.config import ExportCfg
from training.smoothing import ALPHA, calibration_batches, smooth_llm
from training.variants import (
    ALL_PRECISIONS,
    FILES,
    calibration_texts,
    check_set,
    check_variants,
    convert_fp16,
    quantize_int8,
    quantize_int8_blockwise,
    remove,
    scratch_dir,
    write_bf16,
)

log = logging.getLogger(__name__)

OPSET = 17
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _export_onnx(module, args, path: Path, input_names, dynamic_axes) -> None:
    # the TorchScript exporter: measured to give ORT max diff < 1e-6 on both towers and exports the
    # LLM in seconds, where the dynamo exporter took ~1 min and emitted a duplicate output name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=list(input_names),
            output_names=["embedding"],
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            dynamo=False,
        )


def text_module(model: LLM2CLIP, llm: LLMEncoder | None) -> torch.nn.Module:
    """The module ``text_encoder.onnx`` is traced from: LLM + pooling + adapter, or the CLIP text tower."""
    if model.text_tower is not None:
        return ClipTextEncoderModule(model).eval()
    if llm is None or model.adapter is None:
        raise ValueError("a model with an adapter needs its frozen LLM to export the text encoder")
    return TextEncoderModule(llm.eval().float(), model.adapter).eval()


def export_bundle(model: LLM2CLIP, llm: LLMEncoder | None, tokenizer_dir: str | Path, out: str | Path,
                  text_info: dict | None = None, cfg: ExportCfg | None = None) -> B.ModelBundle:
    """Write ``out`` (atomically) with both ONNX encoders, the tokenizer and the manifest.

    ``llm`` is the frozen text encoder of an adapter model, None for a model with a CLIP text tower.
    ``cfg.precisions`` names the text encoder variants to write (``training.variants``); each one other than
    fp32 is checked against fp32 on ``cfg.check_data`` (default: a generated held-out scene set) and the result
    goes in the manifest, where the service reads whether it may serve it."""
    cfg = cfg or ExportCfg()
    unknown = set(cfg.precisions) - set(ALL_PRECISIONS)
    if unknown:
        raise ValueError(f"unknown precisions {sorted(unknown)}: choose among {', '.join(ALL_PRECISIONS)}")
    precisions = list(cfg.precisions)
    if "bf16" in precisions and model.text_tower is not None:
        log.warning("no bf16 text encoder for a model with a CLIP text tower: the torch variant is for adapter "
                    "models; writing the others")
        precisions = [p for p in precisions if p != "bf16"]
    writer = _BundleWriter(model.eval().float(), llm, B.staging_dir(Path(out)), cfg)
    try:
        writer.write_encoders(tokenizer_dir)
        variants = writer.write_variants([p for p in dict.fromkeys(precisions) if p != "fp32"])
        writer.write_manifest(text_info, variants)
        B.publish(writer.stage, Path(out))
    except BaseException:
        shutil.rmtree(writer.stage, ignore_errors=True)
        raise
    return B.load_bundle(out)


def _export_text(module: torch.nn.Module, tok: Tokenizer, path: Path) -> None:
    ids, mask, _ = tok(["an example caption to trace the text encoder", "a shorter one"])
    with torch.no_grad():
        _export_onnx(module, (torch.from_numpy(ids), torch.from_numpy(mask)), path, ["input_ids", "attention_mask"],
                     {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                      "embedding": {0: "batch"}})


class _BundleWriter:
    """The files of one bundle, written into its staging folder ``stage``."""

    def __init__(self, model: LLM2CLIP, llm: LLMEncoder | None, stage: Path, cfg: ExportCfg) -> None:
        self.model, self.llm, self.stage, self.cfg = model, llm, stage, cfg
        tower = model.cfg.text_tower
        self.max_tokens = tower.context if tower is not None else model.cfg.text.max_tokens

    def write_encoders(self, tokenizer_dir: str | Path) -> None:
        """Both ONNX encoders (fp32) and the tokenizer."""
        size = self.model.cfg.preprocess.size
        with torch.no_grad():
            _export_onnx(ImageEncoderModule(self.model).eval(), (torch.zeros(2, 3, size, size),),
                         self.stage / B.IMAGE_ONNX, ["pixel_values"],
                         {"pixel_values": {0: "batch"}, "embedding": {0: "batch"}})
        tok_dir = self.stage / B.TOKENIZER_DIR
        tok_dir.mkdir()
        for name in TOKENIZER_FILES:
            if (Path(tokenizer_dir) / name).is_file():
                shutil.copy2(Path(tokenizer_dir) / name, tok_dir / name)
        self.special = uses_special_tokens(tokenizer_dir)
        self.tok = Tokenizer(tok_dir, self.max_tokens, add_special_tokens=self.special)
        _export_text(text_module(self.model, self.llm), self.tok, self.stage / B.TEXT_ONNX)

    def write_variants(self, wanted: list[str]) -> dict[str, dict]:
        """The text encoder variants besides fp32; returns the manifest's ``text.variants``, fp32 included."""
        variants: dict[str, dict] = {"fp32": {"file": B.TEXT_ONNX, "runtime": "onnxruntime", "precision": "fp32"}}
        work = scratch_dir()
        try:
            for name in wanted:
                target = self.stage / FILES[name]
                if name == "int8":
                    how = self._int8_variant(self.stage / B.TEXT_ONNX, target, work)
                elif name == "fp16":
                    how = convert_fp16(self.stage / B.TEXT_ONNX, target)
                else:
                    how = write_bf16(self.llm, self.model.adapter, target)
                variants[name] = {"file": FILES[name], "runtime": "torch" if name == "bf16" else "onnxruntime",
                                  "precision": name, "how": how}
                if how.get("max_batch_size"):
                    variants[name]["max_batch_size"] = how["max_batch_size"]
        finally:
            remove(work)
        return variants

    def _int8_variant(self, fp32: Path, target: Path, work: Path) -> dict:
        """The int8 text encoder: SmoothQuant + dynamic quantisation (``smoothquant``), or MatMulNBits
        (``blockwise``)."""
        method, llm = self.cfg.int8_method, self.llm
        if method == "blockwise":
            return quantize_int8_blockwise(fp32, target)
        if method != "smoothquant":
            raise ValueError(f"unknown int8 method {method!r}: smoothquant or blockwise")
        summary = None
        source = fp32
        if llm is not None and self.model.text_tower is None:
            smoothed = copy.deepcopy(llm).float().eval()
            texts = calibration_texts(self.cfg.calibration_data, work)
            summary = smooth_llm(smoothed, calibration_batches(self.tok, texts), ALPHA)
            if summary is not None:
                source = work / "smoothed.onnx"
                _export_text(TextEncoderModule(smoothed, self.model.adapter).eval(), self.tok, source)
        how = quantize_int8(source, target)
        how["smoothquant"] = summary
        return how

    def write_manifest(self, text_info: dict | None, variants: dict[str, dict]) -> None:
        """The manifest, then each variant's check against fp32 written into it."""
        written = B.write_manifest(self.stage, self._manifest(text_info, variants))
        wanted = [v for v in variants if v != "fp32"]
        checkable = [v for v in wanted if v != "fp16"] if self.cfg.check_variants else []
        if checkable:
            work = scratch_dir()
            try:
                data = check_set(self.cfg.check_data, work)
                results = check_variants(B.ModelBundle(self.stage, written), checkable, data, self.cfg.thresholds,
                                         threads=self.cfg.threads, progress=self.cfg.progress)
            finally:
                remove(work)
            for name, result in results.items():
                variants[name]["check"] = result
        if "fp16" in variants:
            variants["fp16"]["check"] = {"passed": False, "reason": "fp16 is checked on a GPU only"}
        B.write_manifest(self.stage, {k: v for k, v in written.items()
                                      if k not in ("format", "format_version", "created", "files", "fingerprint")})

    def _manifest(self, text_info: dict | None, variants: dict[str, dict]) -> dict:
        cfg = self.model.cfg
        tower = cfg.text_tower
        return {
            "embed_dim": cfg.embed_dim,
            "normalized": True,
            "precision": "fp32",
            "image": {
                "file": B.IMAGE_ONNX,
                "input": "pixel_values",
                "size": cfg.preprocess.size,
                "resize": cfg.preprocess.resize,
                "mean": list(cfg.preprocess.mean),
                "std": list(cfg.preprocess.std),
                "layout": "NCHW RGB float32",
            },
            "text": {
                "file": B.TEXT_ONNX,
                "inputs": ["input_ids", "attention_mask"],
                "tokenizer": B.TOKENIZER_DIR,
                "max_tokens": self.max_tokens,
                "pooling": "eot" if tower is not None else cfg.text.pooling,
                "attention": "causal" if tower is not None else "bidirectional",
                "pad_token_id": self.tok.pad_id,
                "add_special_tokens": self.special,
                "llm": text_info or {"name": cfg.text.llm},
                "variants": variants,
            },
            "model": cfg.to_dict(),
            "logit_scale": float(self.model.logit_scale.detach().exp()),
            "opset": OPSET,
        }


def export_checkpoint(checkpoint: str | Path, out: str | Path, text_encoder: str | Path | None = None,
                      cfg: ExportCfg | None = None) -> B.ModelBundle:
    """A stage-2 checkpoint and its text encoder (by default the one the checkpoint names) as a model
    bundle."""
    model, text_info = load_checkpoint(checkpoint)
    if model.text_tower is not None:
        tok_dir = Path(text_encoder or text_info.get("tokenizer", ""))
        if not (tok_dir / "tokenizer.json").is_file():
            raise BundleError(f"the tokenizer of {checkpoint} ({tok_dir}) is missing: give the checkpoint's "
                              "tokenizer folder (one with tokenizer.json)")
        return export_bundle(model, None, tok_dir, out, {**text_info, "tokenizer": str(tok_dir)}, cfg)
    llm_dir = Path(text_encoder or text_info.get("path", ""))
    if not (llm_dir / "config.json").is_file():
        raise BundleError(f"the text encoder of {checkpoint} ({llm_dir}) is not a model folder: give the "
                          "checkpoint's text encoder folder")
    llm = LLMEncoder.from_pretrained(llm_dir, attn="eager")
    return export_bundle(model, llm, llm_dir, out, {**text_info, "path": str(llm_dir)}, cfg)


def compare_with_torch(bundle_dir: str | Path, model: LLM2CLIP, llm: LLMEncoder | None, texts: list[str],
                       pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosine between ONNX Runtime and PyTorch embeddings, per image and per text."""
    from llm2clip.encoders.onnx import load_onnx_encoders

    img_enc, txt_enc = load_onnx_encoders(bundle_dir)
    model.eval()
    with torch.no_grad():
        ti = model.encode_image(torch.from_numpy(pixels)).numpy()
        batch = txt_enc.tokenize(texts)
        tt = text_module(model, llm)(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask))
        tt = tt.numpy()
    oi = img_enc.encode_pixels(pixels)
    ot = txt_enc.encode_tokens(batch)
    return (oi * ti).sum(1), (ot * tt).sum(1)


def check_export(checkpoint: str | Path, bundle_dir: str | Path, text_encoder: str | Path | None = None) -> dict:
    """Minimum cosine between ONNX Runtime and PyTorch on random images and captions of several lengths."""
    model, text_info = load_checkpoint(checkpoint)
    llm = None
    if model.text_tower is None:
        llm = LLMEncoder.from_pretrained(text_encoder or text_info["path"], attn="eager")
    size = model.cfg.preprocess.size
    pixels = np.random.default_rng(0).normal(size=(4, 3, size, size)).astype(np.float32)
    texts = ["a red sneaker", "a large blue bag at the top left, mirrored, on a dotted white background. " * 6,
             "three items: two coats and a sandal", "word " * 600]
    img, txt = compare_with_torch(bundle_dir, model, llm, texts, pixels)
    return {"image": round(float(img.min()), 6), "text": round(float(txt.min()), 6)}
