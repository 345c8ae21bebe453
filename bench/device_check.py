"""GPU paths, checked and measured in a few minutes: run by bench/device_check.sh on a GPU machine.

What it checks, each only when present, each reported as ok / skipped (why) / failed (why):
1. torch CUDA: the bf16 matmul peak, then the project's torch text backend (``TorchTextEncoder``) on an
   LLM of SmolLM2-135M's shapes (random weights: speed does not depend on them) in bf16 on the GPU, at
   batch 1 / 32 / 128 of 256 tokens, its output checked against the same model in fp32 (cosine).
2. ONNX Runtime's CUDA / TensorRT providers: the backend picks them (``make_session``), runs a small
   exported graph with each, and compares with the CPU provider.
3. FAISS GPU: a flat inner-product index on the GPU against the CPU one (same neighbours).
4. The capability probe's choice on this machine (``preferred_precisions``).
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

    fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
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


def main() -> int:
    record("torch_cuda", torch_cuda)
    record("torch_text_backend_bf16", torch_text_backend)
    record("onnxruntime_gpu", onnxruntime_gpu)
    record("faiss_gpu", faiss_gpu)
    record("capability_probe", probe_choice)
    out = os.environ.get("OUT")
    if out:
        Path(out, "device_check.json").write_text(json.dumps(RESULTS, indent=2))
    failed = [k for k, v in RESULTS.items() if v["status"] == "failed"]
    print(f"\n{len(RESULTS) - len(failed)} of {len(RESULTS)} checks ran or were skipped with a reason; "
          f"failed: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
