"""Evaluate a model on a dataset split: encode captions and images, then score with `uit_reid.retrieval`.

The field's protocol: captions are the queries, images the gallery; R@1/5/10, mAP and mINP in
percent. `retrieval` computes the metrics from arrays and knows nothing of models; this module
is the bridge.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from uit_reid import augment, retrieval
from uit_reid.data import Split, build_eval_loaders
from uit_reid.device import autocast
from uit_reid.model import UITModel

__all__ = ["encode_split", "evaluate_model"]


@torch.no_grad()
def encode_split(
    model: UITModel,
    split: Split,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    amp_dtype: torch.dtype | None = None,
    interpolation: str | None = None,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalised (query features, query pids, gallery features, gallery pids) of an eval split.

    Images are resized to the model's own input size (``model.image_size``) with its training
    resize (``model.interpolation``) unless ``interpolation`` names another. Gallery images are
    decoded by ``num_workers`` loader processes while the model encodes; ``progress`` shows a bar
    over the gallery batches (on a terminal).
    """
    gallery_loader, query_loader = build_eval_loaders(
        split, model.encoder.tokenize, model.image_size, batch_size=batch_size, num_workers=num_workers,
        transform=augment.build_eval_transform(model.image_size, interpolation=interpolation or model.interpolation),
    )
    device = torch.device(device)
    was_training = model.training
    model.eval()
    g_feats, g_pids, q_feats, q_pids = [], [], [], []
    with autocast(device, amp_dtype):
        for batch in tqdm(gallery_loader, desc="encoding gallery", unit="batch", disable=None if progress else True):
            g_feats.append(model.encode_images(batch["images"].to(device, non_blocking=True)).float().cpu())
            g_pids.append(batch["pids"])
        for batch in query_loader:
            q_feats.append(model.encode_texts(batch["text_ids"].to(device, non_blocking=True)).float().cpu())
            q_pids.append(batch["pids"])
    model.train(was_training)
    return torch.cat(q_feats), torch.cat(q_pids), torch.cat(g_feats), torch.cat(g_pids)


def evaluate_model(
    model: UITModel,
    split: Split,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    amp_dtype: torch.dtype | None = None,
    interpolation: str | None = None,
) -> dict[str, float]:
    """Text-to-image R1/R5/R10/mAP/mINP (percent) of ``model`` on an evaluation split."""
    q, q_pids, g, g_pids = encode_split(model, split, batch_size, device, num_workers, amp_dtype, interpolation)
    return retrieval.evaluate(q @ g.t(), q_pids, g_pids)
