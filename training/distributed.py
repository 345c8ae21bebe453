"""Multi-process training helpers: the process group under torchrun, and the feature gather of the CLIP loss.

Launch any training entry point with ``torchrun --nproc_per_node N ...``: torchrun sets RANK, WORLD_SIZE and
LOCAL_RANK, and :func:`process_group` turns them into a process group (NCCL on CUDA, gloo on CPU). Without
those variables everything here is a no-op, so the same code runs as one plain process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _device(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


@contextmanager
def process_group() -> Iterator[DistInfo]:
    """This process's place in the job; joins (and later leaves) a process group when torchrun started it.

    A group the caller already initialized is used as is and left for the caller to destroy.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _device(local_rank)
    if dist.is_available() and dist.is_initialized():
        yield DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)
        return
    if env_world_size() <= 1:
        yield DistInfo(device=device)
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # SyncBatchNorm needs a GPU backend; on CPU gloo is the only choice, hence frozen BN (TrainCfg.freeze_bn)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                            device_id=device if device.type == "cuda" else None)
    try:
        yield DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)
    finally:
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


class _GatherWithGrad(torch.autograd.Function):
    # torch.distributed.nn.functional.all_gather does this but is deprecated, and its successor in
    # _functional_collectives backpropagates with reduce_scatter, which gloo lacks: all_reduce works everywhere

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        ctx.rows = slice(dist.get_rank() * len(x), (dist.get_rank() + 1) * len(x))
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rows]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's rows (same count on each), in rank order, keeping the graph to the local rows
    (open_clip's gather_with_grad).

    Every rank then computes the loss of the whole global batch. The backward sums the gradients that all
    ranks' losses send to this rank's rows (so each is world_size times the true one), and DDP averages over
    ranks: the update is the one a single process with the global batch would make.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)
