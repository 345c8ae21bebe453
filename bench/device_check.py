"""GPU paths, checked and measured in a few minutes: run by bench/device_check.sh on a GPU machine.

What it checks, each only when present, each reported as ok / skipped (why) / failed (why):
1. torch CUDA: the bf16 matmul peak, then the project's torch text backend (``TorchTextEncoder``) on an
   LLM of SmolLM2-135M's shapes (random weights: speed does not depend on them) in bf16 on the GPU, at
   batch 1 / 32 / 128 of 256 tokens, its output checked against the same model in fp32 (cosine).
2. ONNX Runtime's CUDA / TensorRT providers: the backend picks them (``make_session``), runs a small
   exported graph with each, and compares with the CPU provider.
3. FAISS GPU: a flat inner-product index on the GPU against the CPU one (same neighbours).
4. The capability probe's choice on this machine (``preferred_precisions``).
5. A stage-2 training step on the GPU (``training.clip_recipe``: the layer-decayed AdamW groups, bf16 autocast,
   the CLIP loss and the adapter's geometry term) on DINOv2 ViT-S/14's shapes at 224 px, random weights: images/s,
   and that 30 steps on one batch bring its loss down.
6. A stage-1 step on the GPU (``training.stage1``: LoRA on the top 15 of a SmolLM2-shaped Llama's 30 layers,
   bf16 frozen weights, SupCon over mean-pooled captions) at the repro's batch: seconds per step.
7. Stage 1's own loop on the GPU (``bench/device_stage1.py``: ``train_text`` with ``--device cuda``, MNTP then
   contrastive, checkpointed, resumed, validated) on a SmolLM2-shaped random base: samples/s, the resumed run's
   losses against the uninterrupted one's, and the first steps against the same run on the CPU.
Prints one table and writes $OUT/device_check.json when OUT is set.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS: dict[str, dict] = {}


def record(name: str, fn) -> None:
    t0 = time.perf_counter()
    try:
        out = fn()
        RESULTS[name] = {"status": "ok" if out is not None else "skipped", **(out or {})}
    except SkipCheck as exc:
        RESULTS[name] = {"status": "skipped", "why": str(exc)}
    except Exception as exc:  # a check that breaks is a finding, not a crash of the whole script
        RESULTS[name] = {"status": "failed", "why": f"{type(exc).__name__}: {exc}",
                         "trace": traceback.format_exc(limit=4)}
    RESULTS[name]["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"{name}: {json.dumps({k: v for k, v in RESULTS[name].items() if k != 'trace'})}", flush=True)


class SkipCheck(Exception):
    pass


def _best(fn, repeats: int = 5) -> float:
    import torch

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def torch_cuda() -> dict:
    import torch

    if not torch.cuda.is_available():
        raise SkipCheck(f"torch {torch.__version__} sees no CUDA device")
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    peak = 2 * n**3 / _best(lambda: a @ b) / 1e12
    return {"torch": torch.__version__, "device": torch.cuda.get_device_name(0), "bf16_matmul_tflops": round(peak, 1)}


def smollm2_shaped_llm():
    """A random Llama with SmolLM2-135M's shapes, as an ``LLMEncoder``."""
    import torch
    from transformers import LlamaConfig, LlamaModel

    from llm2clip.text import LLMEncoder

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                      rope_theta=100000.0, tie_word_embeddings=True, attn_implementation="sdpa")
    return LLMEncoder(LlamaModel(cfg).eval())


def torch_text_backend() -> dict:
    import numpy as np
    import torch

    from llm2clip.encoders.base import TextBatch
    from llm2clip.encoders.torch_backend import TorchTextCfg, TorchTextEncoder

    if not torch.cuda.is_available():
        raise SkipCheck("no CUDA device")
    try:
        llm = smollm2_shaped_llm()
    except ImportError as exc:
        raise SkipCheck(f"transformers is missing ({exc}): carry its wheel") from None
    params = sum(m.weight.numel() for m in llm.modules() if isinstance(m, torch.nn.Linear))
    ref = TorchTextEncoder(smollm2_shaped_llm(), None, TorchTextCfg(precision="fp32", device="cuda"))
    enc = TorchTextEncoder(llm, None, TorchTextCfg(precision="bf16", device="cuda"))
    rng = np.random.default_rng(0)
    out: dict = {"per_token_params_m": round(params / 1e6, 1)}
    for batch in (1, 32, 128):
        ids = rng.integers(100, 40000, size=(batch, 256)).astype(np.int64)
        tb = TextBatch(ids, np.ones_like(ids), np.zeros(batch, bool))
        seconds = _best(lambda tb=tb: enc.encode_tokens(tb))
        tok_s = batch * 256 / seconds
        out[f"bf16_b{batch}_tok_s"] = round(tok_s)
        out[f"bf16_b{batch}_tflops"] = round(2 * params * tok_s / 1e12, 2)
    ids = rng.integers(100, 40000, size=(8, 256)).astype(np.int64)
    tb = TextBatch(ids, np.ones_like(ids), np.zeros(8, bool))
    cos = (enc.encode_tokens(tb) * ref.encode_tokens(tb)).sum(1)
    out["bf16_vs_fp32_cosine_min"] = round(float(cos.min()), 5)
    return out


def onnxruntime_gpu() -> dict:
    import numpy as np
    import onnxruntime as ort

    available = ort.get_available_providers()
    gpu = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available]
    if not gpu:
        raise SkipCheck(f"onnxruntime {ort.__version__} has no GPU provider ({available}): install "
                        "onnxruntime-gpu (the project's gpu extra)")
    import onnx
    from onnx import TensorProto, helper

    from llm2clip.encoders.onnx import make_session

    rng = np.random.default_rng(0)
    w = rng.normal(size=(576, 1536)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ("n", 576))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ("n", 1536))],
                              [helper.numpy_helper.from_array(w, "w")])
    path = Path(os.environ.get("TMPDIR", "/tmp")) / "llm2clip-device-check.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    x = rng.normal(size=(4096, 576)).astype(np.float32)
    cpu = make_session(path, ["CPUExecutionProvider"]).run(None, {"x": x})[0]
    out: dict = {"onnxruntime": ort.__version__, "providers": available}
    for provider in gpu:
        session = make_session(path, [provider, "CPUExecutionProvider"])
        y = session.run(None, {"x": x})[0]
        t0 = time.perf_counter()
        for _ in range(20):
            session.run(None, {"x": x})
        out[provider] = {"used": session.get_providers()[0],
                         "max_abs_diff_vs_cpu": float(np.abs(y - cpu).max()),
                         "ms_per_run": round((time.perf_counter() - t0) / 20 * 1000, 3)}
    return out


def faiss_gpu() -> dict:
    try:
        import faiss
    except ImportError:
        raise SkipCheck("faiss is not installed (faiss-gpu-cu12 is the project's gpu extra)") from None
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
        raise SkipCheck(f"faiss {faiss.__version__} has no GPU support or sees no GPU")
    import numpy as np

    rng = np.random.default_rng(0)
    xb = rng.normal(size=(200_000, 256)).astype(np.float32)
    xq = rng.normal(size=(1024, 256)).astype(np.float32)
    faiss.normalize_L2(xb)
    faiss.normalize_L2(xq)
    cpu = faiss.IndexFlatIP(256)
    cpu.add(xb)
    gpu = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, cpu)
    _, i_cpu = cpu.search(xq, 10)
    t0 = time.perf_counter()
    _, i_gpu = gpu.search(xq, 10)
    seconds = time.perf_counter() - t0
    return {"faiss": faiss.__version__, "top10_agreement": float((i_cpu == i_gpu).mean()),
            "gpu_qps_batch1024": round(1024 / seconds)}


def probe_choice() -> dict:
    from llm2clip.encoders.capability import preferred_precisions, probe

    caps = probe(torch_cuda=True)
    return {"machine": caps.summary(), "preferred": preferred_precisions(caps)}


def _update(opt, loss) -> float:
    """One optimizer step on ``loss``; its value."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def stage2_train_step(device: str = "cuda", batch: int = 256) -> dict:
    import torch

    from llm2clip.config import AdapterCfg, ModelCfg, VisionCfg
    from llm2clip.model import LLM2CLIP
    from training.clip_recipe import clip_loss, geometry_loss, param_groups
    from training.config import TrainCfg

    if device == "cuda" and not torch.cuda.is_available():
        raise SkipCheck("no CUDA device")
    torch.manual_seed(0)
    cfg = ModelCfg(embed_dim=256, vision=VisionCfg(arch="dinov2-s14", image_size=224, pretrained=False),
                   adapter=AdapterCfg(in_dim=576))
    model = LLM2CLIP(cfg).to(device).train()
    opt = torch.optim.AdamW(param_groups(model, TrainCfg()), betas=(0.9, 0.98), eps=1e-6, fused=True)
    pixels = torch.randn(batch, 3, 224, 224, device=device)
    caps = torch.randn(batch, 576, device=device) + 3.0

    def step() -> float:
        with torch.autocast(device, dtype=torch.bfloat16):
            img, txt = model.encode_image(pixels), model.encode_text_embedding(caps)
        return _update(opt, clip_loss(img.float(), txt.float(), model.logit_scale) + geometry_loss(caps, txt.float()))

    first = step()
    seconds = _best(step, repeats=5)
    for _ in range(25):
        last = step()
    return {"batch": batch, "img_s": round(batch / seconds), "loss_first": round(first, 3), "loss_after_30": round(last, 3),
            "learns": last < first}


def stage1_lora_step(device: str = "cuda", views: int = 32) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from training.stage1.config import Stage1Cfg
    from training.stage1.lora import add_lora, base_of
    from training.stage1.losses import supcon_loss

    if device == "cuda" and not torch.cuda.is_available():
        raise SkipCheck("no CUDA device")
    torch.manual_seed(0)
    lcfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                       num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True, attn_implementation="sdpa")
    causal = LlamaForCausalLM(lcfg).to(device)
    peft_model = add_lora(causal, Stage1Cfg(lora_layers=15, grad_checkpointing=False))
    base = base_of(causal)  # the LoRA layers are injected into it in place
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
    tokens = 160  # the repro's 8 scenes and their twins, 2 views each (32 views); captions of ~160 tokens
    ids = torch.randint(100, 40000, (views, tokens), device=device)
    mask = torch.ones_like(ids)
    labels = torch.arange(views, device=device) // 2

    def step() -> float:
        with torch.autocast(device, dtype=torch.bfloat16):
            hidden = base(input_ids=ids, attention_mask=mask).last_hidden_state
            emb = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
            loss = supcon_loss(emb, labels, 0.05)
        return _update(opt, loss)

    first = step()
    seconds = _best(step, repeats=5)
    return {"views": views, "tokens": tokens, "trainable_m": round(sum(p.numel() for p in params) / 1e6, 2),
            "s_per_step": round(seconds, 4), "loss_first": round(first, 3)}


def stage1_loop_cuda() -> dict:
    import torch

    if not torch.cuda.is_available():
        raise SkipCheck("no CUDA device")
    from device_stage1 import stage1_loop

    return stage1_loop(device="cuda", shape="smollm2", steps=12, cpu_steps=4)


def main() -> int:
    record("torch_cuda", torch_cuda)
    record("torch_text_backend_bf16", torch_text_backend)
    record("onnxruntime_gpu", onnxruntime_gpu)
    record("faiss_gpu", faiss_gpu)
    record("capability_probe", probe_choice)
    record("stage2_train_step_bf16", stage2_train_step)
    record("stage1_lora_step_bf16", stage1_lora_step)
    record("stage1_loop_cuda", stage1_loop_cuda)
    out = os.environ.get("OUT")
    if out:
        Path(out, "device_check.json").write_text(json.dumps(RESULTS, indent=2))
    failed = [k for k, v in RESULTS.items() if v["status"] == "failed"]
    print(f"\n{len(RESULTS) - len(failed)} of {len(RESULTS)} checks ran or were skipped with a reason; "
          f"failed: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
