"""What this machine can run fast: CPU instruction sets, GPU runtimes; and which precision that means.

The probe reads what is cheap to read (``/proc/cpuinfo``, ONNX Runtime's providers) and imports torch only
when asked about torch's CUDA. The preference order it gives is the one measured on these machines
(bench/bench_encoders.py, bench/RESULTS.md):
- a CUDA device: fp16 (ONNX Runtime CUDA / TensorRT), then bf16 (torch CUDA);
- a CPU with bf16 matmul (AVX-512 BF16 or AMX) and torch installed: bf16 (torch, SDPA), measured 1.4-1.7x
  ONNX Runtime fp32 on batches of captions and faster than either int8 kind that keeps R@1;
- a CPU with int8 dot products (AVX-512 VNNI, AVX-VNNI or AMX): int8 (ONNX Runtime), the torch-free
  speed-up, when the bundle's int8 encoder passed its check;
- otherwise fp32 (ONNX Runtime), which is always there: every bundle has it and it is the reference.
"""

from __future__ import annotations

import importlib.util
import logging
import platform
from dataclasses import dataclass, field
from functools import lru_cache

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "int8", "fp16")


@dataclass(frozen=True)
class Capabilities:
    cpu: str = ""  # model name, for logs and bench reports
    cpu_flags: frozenset[str] = field(default_factory=frozenset)
    ort_providers: tuple[str, ...] = ()
    torch_installed: bool = False
    torch_cuda: bool = False  # only probed when asked (importing torch costs a second and ~200 MB)

    @property
    def amx(self) -> bool:
        return {"amx_bf16", "amx_int8", "amx_tile"} <= self.cpu_flags

    @property
    def cpu_bf16(self) -> bool:
        return self.amx or "avx512_bf16" in self.cpu_flags

    @property
    def cpu_int8(self) -> bool:
        return self.amx or bool({"avx512_vnni", "avx_vnni"} & self.cpu_flags)

    @property
    def ort_cuda(self) -> bool:
        return bool({"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(self.ort_providers))

    @property
    def cuda(self) -> bool:
        return self.ort_cuda or self.torch_cuda

    def summary(self) -> str:
        parts = [p for p, on in (("amx", self.amx), ("bf16", self.cpu_bf16), ("vnni", self.cpu_int8),
                                 ("ort-cuda", self.ort_cuda), ("torch-cuda", self.torch_cuda)) if on]
        return f"{self.cpu or platform.machine()} [{', '.join(parts) or 'no bf16/int8/cuda'}]"


def _cpu_info() -> tuple[str, frozenset[str]]:
    try:
        text = open("/proc/cpuinfo", encoding="utf-8", errors="replace").read()
    except OSError:  # not Linux: no flags known, fp32 only unless a GPU is there
        return platform.processor(), frozenset()
    name, flags = "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not name:
            name = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = frozenset(value.split())
    return name, flags


@lru_cache(maxsize=4)
def probe(torch_cuda: bool = False) -> Capabilities:
    """The machine's capabilities. ``torch_cuda`` also imports torch to ask for a CUDA device."""
    name, flags = _cpu_info()
    try:
        import onnxruntime as ort

        providers = tuple(ort.get_available_providers())
    except ImportError:
        providers = ()
    installed = importlib.util.find_spec("torch") is not None
    has_cuda = False
    if torch_cuda and installed:
        import torch

        has_cuda = bool(torch.cuda.is_available())
    return Capabilities(name, flags, providers, installed, has_cuda)


def preferred_precisions(caps: Capabilities) -> list[str]:
    """Precisions to try, best first, on a machine with ``caps``; fp32 always last."""
    order: list[str] = []
    if caps.ort_cuda:
        order.append("fp16")
    if caps.torch_cuda:
        order.append("bf16")
    if not caps.cuda:
        if caps.cpu_bf16 and caps.torch_installed:
            order.append("bf16")
        if caps.cpu_int8:
            order.append("int8")
    order.append("fp32")
    return list(dict.fromkeys(order))
