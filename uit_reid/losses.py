"""Losses for text-to-image person retrieval: pure functions on tensors.

Every function takes *unnormalised* features ``(B, D)``; image ``i`` and caption ``i`` form a
pair, and ``pids`` ``(B,)`` says which identity each pair shows. Features are cast to float32 and
computed with autocast disabled, so the losses behave the same under bf16/fp16 training.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

__all__ = ["cmt_loss", "cosine_similarity_matrix", "id_loss", "itc_loss", "sdm_loss"]


@contextlib.contextmanager
def _float32(*tensors: torch.Tensor) -> Iterator[None]:
    device_type = tensors[0].device.type if tensors else "cpu"
    with torch.autocast(device_type=device_type, enabled=False):
        yield


def _check_pairs(image_features: torch.Tensor, text_features: torch.Tensor, pids: torch.Tensor | None) -> None:
    if image_features.ndim != 2 or text_features.ndim != 2:
        raise ValueError(
            f"features must be (B, D); got image {tuple(image_features.shape)}, text {tuple(text_features.shape)}"
        )
    if image_features.shape != text_features.shape:
        raise ValueError(
            f"image and text features must pair up: {tuple(image_features.shape)} vs {tuple(text_features.shape)}"
        )
    if pids is not None and pids.shape != (image_features.shape[0],):
        raise ValueError(f"pids must be ({image_features.shape[0]},), got {tuple(pids.shape)}")


def cosine_similarity_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``cos(a_i, b_j)`` for all pairs, in float32: ``(len(a), len(b))``."""
    return F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).t()


def sdm_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    pids: torch.Tensor,
    logit_scale: float = 50.0,
    eps: float = 1e-8,
) -> torch.Tensor:
    r"""Similarity distribution matching (IRRA), used by UIT.

    With :math:`s_{ij} = \cos(v_i, t_j)`, :math:`y_{ij} = [pid_i = pid_j]` and
    :math:`q_{ij} = y_{ij} / \sum_k y_{ik}`:

    .. math::
        p^{i2t}_{ij} = \mathrm{softmax}_j(\tau s_{ij}),\quad
        L = \frac{1}{B}\sum_i \sum_j p^{i2t}_{ij}\big(\log p^{i2t}_{ij} - \log(q_{ij} + \epsilon)\big)
            + \text{the same for } s^\top,

    the KL divergence from the predicted matching distribution to the true one, both directions.
    ``logit_scale`` is :math:`\tau` (fixed at 50 in UIT, a temperature of 0.02).
    """
    _check_pairs(image_features, text_features, pids)
    with _float32(image_features):
        sim = cosine_similarity_matrix(image_features, text_features) * logit_scale
        labels = (pids.reshape(-1, 1) == pids.reshape(1, -1)).float()
        log_q = torch.log(labels / labels.sum(dim=1, keepdim=True) + eps)
        loss = image_features.new_zeros((), dtype=torch.float32)
        for logits in (sim, sim.t()):
            log_p = F.log_softmax(logits, dim=1)
            loss = loss + (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()
        return loss


def itc_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: float = 50.0) -> torch.Tensor:
    r"""Symmetric InfoNCE (CLIP's image-text contrastive loss).

    :math:`L = \tfrac12\big(\mathrm{CE}(\tau S, I) + \mathrm{CE}(\tau S^\top, I)\big)` with
    :math:`S_{ij} = \cos(v_i, t_j)`: pair ``i`` is the only positive of row ``i``.
    """
    _check_pairs(image_features, text_features, None)
    with _float32(image_features):
        logits = cosine_similarity_matrix(image_features, text_features) * logit_scale
        target = torch.arange(logits.shape[0], device=logits.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def id_loss(
    image_logits: torch.Tensor, text_logits: torch.Tensor, pids: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    r"""Identity classification on both modalities: :math:`(\mathrm{CE}(z^v, y) + \mathrm{CE}(z^t, y)) / 2`.

    The logits come from one classifier shared by image and text features (see
    `uit_reid.UITModel`); ``pids`` must be the contiguous training ids ``0..K-1``.
    """
    if image_logits.shape != text_logits.shape or image_logits.ndim != 2:
        raise ValueError(
            f"logits must both be (B, K): image {tuple(image_logits.shape)}, text {tuple(text_logits.shape)}"
        )
    with _float32(image_logits):
        ce_image = F.cross_entropy(image_logits.float(), pids, label_smoothing=label_smoothing)
        ce_text = F.cross_entropy(text_logits.float(), pids, label_smoothing=label_smoothing)
        return (ce_image + ce_text) / 2


def _triplet_one_way(sim: torch.Tensor, same: torch.Tensor, margin: float, hardest_positive: bool) -> torch.Tensor:
    """Triplet term with row ``i`` as anchor, column ``i`` its positive; distances ``1 - sim``."""
    detached = sim.detach()
    different = ~same
    has_negative = different.any(dim=1)
    neg_idx = detached.masked_fill(same, float("-inf")).argmax(dim=1)
    if hardest_positive:
        pos_idx = detached.masked_fill(different, float("inf")).argmin(dim=1)
    else:
        pos_idx = torch.arange(sim.shape[0], device=sim.device)
    rows = torch.arange(sim.shape[0], device=sim.device)
    d_pos = 1.0 - sim[rows, pos_idx]
    d_neg = 1.0 - sim[rows, neg_idx]
    hinge = F.relu(d_pos - d_neg + margin)
    # a masked mean rather than ``hinge[has_negative]``: no data-dependent shape, so no host sync in
    # the training step; with no negative at all it is 0 and the graph stays connected (DDP)
    weights = has_negative.to(hinge.dtype)
    return (hinge * weights).sum() / weights.sum().clamp_min(1.0)


def cmt_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    pids: torch.Tensor,
    margin: float = 0.05,
    hardest_positive: bool = False,
) -> torch.Tensor:
    r"""Cross-modal triplet loss with hardest negatives (UIT's CMT).

    Distances are :math:`d = 1 - \cos`. For caption :math:`t_i` the hardest negative image is
    :math:`n(i) = \arg\max_{j: pid_j \ne pid_i} \cos(t_i, v_j)`, chosen on detached similarities:

    .. math::
        L = \mathrm{mean}_i\,[d(t_i, v_i) - d(t_i, v_{n(i)}) + m]_+
          + \mathrm{mean}_i\,[d(v_i, t_i) - d(v_i, t_{n'(i)}) + m]_+ ,

    the second term with images as anchors and captions as negatives. Anchors without a
    negative in the batch are left out of the mean. With ``hardest_positive=True`` the positive
    is the least similar item of the same identity instead of the anchor's own pair.
    """
    _check_pairs(image_features, text_features, pids)
    with _float32(image_features):
        sim_t2v = cosine_similarity_matrix(text_features, image_features)
        same = pids.reshape(-1, 1) == pids.reshape(1, -1)
        t_anchor = _triplet_one_way(sim_t2v, same, margin, hardest_positive)
        v_anchor = _triplet_one_way(sim_t2v.t(), same, margin, hardest_positive)
        return t_anchor + v_anchor
