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

from collections.abc import Mapping

import torch
import torch.distributed as dist

__all__ = ["all_reduce_mean", "gather_no_grad", "gather_with_grad", "is_distributed", "rank", "world_size"]


def is_distributed() -> bool:
    """True inside an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of ranks (1 outside a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank (0 outside a process group)."""
    return dist.get_rank() if is_distributed() else 0


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
