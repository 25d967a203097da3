"""The one place where features cross process boundaries.

Contrastive and triplet losses are only as good as the batch they see. Under DDP each rank holds
a slice; `gather_with_grad` concatenates the slices of all ranks while keeping the autograd
graph, so every rank computes the loss of the global batch (as open_clip's ``ClipLoss`` does with
``gather_with_grad``). With DDP's gradient averaging this yields exactly the gradient of the
single-process global-batch loss: the backward of the gather sums each rank's gradient for a
rank's rows (every rank holds the same global loss, so that sum is ``world_size`` times the
single-process gradient) and DDP divides by ``world_size``. Per-sample losses (ID, TIR) are means
over a rank's rows; with equal batches per rank DDP's average is again the global mean. The loss
*values* of those per-sample losses differ between ranks: log them through `all_reduce_mean`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping

import torch
import torch.distributed as dist

__all__ = [
    "all_reduce_mean",
    "gather_no_grad",
    "gather_with_grad",
    "init_from_torchrun",
    "is_distributed",
    "rank",
    "require_process_group",
    "torchrun_process_group",
    "world_size",
]


def is_distributed() -> bool:
    """True inside an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of ranks (1 outside a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank (0 outside a process group)."""
    return dist.get_rank() if is_distributed() else 0


def init_from_torchrun(device: str = "auto") -> bool:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1); True when this call created it.

    NCCL when CUDA is available and ``device`` is not ``"cpu"``, else gloo.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    dist.init_process_group(backend="nccl" if torch.cuda.is_available() and device != "cpu" else "gloo")
    return True


def require_process_group() -> None:
    """Refuse to go on when torchrun started several processes (``WORLD_SIZE`` > 1) but this one has not
    joined their process group: library code never creates it (the application does, once)."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            f"WORLD_SIZE={launched}: torchrun started {launched} processes but this one has no process group; "
            "call uit_reid.distributed.init_from_torchrun() (and torch.cuda.set_device on GPUs) before "
            "building the Trainer, or run `uit-reid train`, which does"
        )


@contextlib.contextmanager
def torchrun_process_group(device: str = "auto") -> Iterator[None]:
    """For application entry points: join torchrun's process group for the block, then leave it.

    Puts this process on GPU ``LOCAL_RANK`` when ``device`` resolves to CUDA under torchrun (NCCL
    collectives use the current device). Outside torchrun it does nothing.
    """
    created = init_from_torchrun(device)
    try:
        if is_distributed():
            from uit_reid.device import resolve_device

            resolved = resolve_device(device)
            if resolved.type == "cuda":
                local = int(os.environ.get("LOCAL_RANK", "0"))
                torch.cuda.set_device(resolved.index if resolved.index is not None else local)
        yield
    finally:
        if created:
            dist.destroy_process_group()


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from all ranks along dim 0, differentiably; identity on one process.

    Every rank must pass a tensor of the same shape (the samplers guarantee equal batches).
    """
    if not is_distributed():
        return tensor
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor.contiguous()), dim=0)


def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (ids, labels) from all ranks along dim 0, without autograd."""
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def all_reduce_mean(values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Average scalar tensors over ranks in one collective; a copy of ``values`` on one process.

    With equal per-rank batches the mean of per-rank means is the global-batch mean, so logged
    losses equal those of one process holding the whole batch.
    """
    if not values:
        return {}
    names = list(values)
    stacked = torch.stack([values[n].detach().float().reshape(()) for n in names])
    if is_distributed():
        dist.all_reduce(stacked)
        stacked = stacked / dist.get_world_size()
    return dict(zip(names, stacked.unbind(0), strict=True))
