"""Evaluate a model on a dataset split: encode captions and images, then score with `uit_reid.retrieval`.

The field's protocol: captions are the queries, images the gallery; R@1/5/10, mAP and mINP in
percent. Where the split's records carry attributes, also attribute binding (`evaluate_binding`).
`retrieval` computes the metrics from arrays and knows nothing of models; this module is the bridge.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from uit_reid import retrieval
from uit_reid.data import PROBE_KINDS, Split, binding_probes, build_eval_loaders
from uit_reid.device import autocast
from uit_reid.model import UITModel

__all__ = ["BINDING_KEYS", "binding_table", "encode_split", "evaluate_binding", "evaluate_model"]

BINDING_KEYS = tuple(k for kind in PROBE_KINDS for k in (kind, f"{kind}_n"))
"""What `evaluate_binding` can return: each probe's accuracy (percent) and its number of images."""


def _loaders(model: UITModel, split: Split, batch_size: int, num_workers: int, interpolation: str | None):
    return build_eval_loaders(
        split, model.encoder.tokenize, model.image_size, batch_size=batch_size, num_workers=num_workers,
        transform=model.eval_transform(interpolation),
    )


def _encode_gallery(model: UITModel, loader, device: torch.device, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    feats, pids = [], []
    for batch in tqdm(loader, desc="encoding gallery", unit="batch", disable=None if progress else True):
        feats.append(model.encode_image(batch["images"].to(device, non_blocking=True), normalize=True).float().cpu())
        pids.append(batch["pids"])
    return torch.cat(feats), torch.cat(pids)


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
    gallery_loader, query_loader = _loaders(model, split, batch_size, num_workers, interpolation)
    device = torch.device(device)
    was_training = model.training
    model.eval()
    q_feats, q_pids = [], []
    with autocast(device, amp_dtype):
        g_feats, g_pids = _encode_gallery(model, gallery_loader, device, progress)
        for batch in query_loader:
            q_feats.append(model.encode_text(batch["text_ids"].to(device, non_blocking=True), normalize=True).float().cpu())
            q_pids.append(batch["pids"])
    model.train(was_training)
    return torch.cat(q_feats), torch.cat(q_pids), g_feats, g_pids


def evaluate_model(
    model: UITModel,
    split: Split,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    amp_dtype: torch.dtype | None = None,
    interpolation: str | None = None,
) -> dict[str, float]:
    """Text-to-image R1/R5/R10/mAP/mINP (percent) of ``model`` on an evaluation split.

    Where the split's records carry attributes, also `evaluate_binding`'s keys (``binding``, ...).
    """
    q, q_pids, g, g_pids = encode_split(model, split, batch_size, device, num_workers, amp_dtype, interpolation)
    metrics = retrieval.evaluate(q @ g.t(), q_pids, g_pids)
    metrics.update(evaluate_binding(model, split, batch_size, device, amp_dtype=amp_dtype, image_features=g))
    return metrics


@torch.no_grad()
def evaluate_binding(
    model: UITModel,
    split: Split,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    amp_dtype: torch.dtype | None = None,
    interpolation: str | None = None,
    *,
    image_features: torch.Tensor | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Attribute-binding accuracy of ``model`` on the split's records that carry attributes.

    For each probe of `uit_reid.data.probes` (``binding``: upper and lower garment colours swapped;
    ``presence``: one garment colour replaced by one the person does not wear;
    ``binding_shoe_upper``; ``binding_bag_hat``) the percent of images whose true caption scores above
    the contrast caption (ties count half: chance is 50), and ``<probe>_n``, its number of images.
    Probes no record supports are left out: a split without attributes gives ``{}``.
    ``image_features`` (normalised, one row per record, as `encode_split` returns them) saves encoding
    the images again; ``seed`` fixes the presence control's colours.
    """
    probes = binding_probes(split.records, seed)
    if not probes:
        return {}
    device = torch.device(device)
    was_training = model.training
    model.eval()
    captions = sorted({c for p in probes.values() for c in (*p.true, *p.contrast)})
    feats = []
    with autocast(device, amp_dtype):
        if image_features is None:
            loader = _loaders(model, split, batch_size, num_workers, interpolation)[0]
            image_features = _encode_gallery(model, loader, device, progress=False)[0]
        for start in range(0, len(captions), batch_size):
            ids = model.encoder.tokenize(captions[start : start + batch_size]).to(device)
            feats.append(model.encode_text(ids, normalize=True).float().cpu())
    model.train(was_training)
    text = dict(zip(captions, torch.cat(feats), strict=True))
    out: dict[str, float] = {}
    for kind, p in probes.items():
        images = image_features[p.image_ids].float()
        true = (images * torch.stack([text[c] for c in p.true])).sum(dim=1)
        contrast = (images * torch.stack([text[c] for c in p.contrast])).sum(dim=1)
        out[kind] = retrieval.binding_accuracy(true, contrast)
        out[f"{kind}_n"] = len(p)
    return out


_PROBE_LABELS = {
    "binding": "upper vs lower colours swapped",
    "presence": "a garment colour not worn (control)",
    "binding_shoe_upper": "upper vs shoe colours swapped",
    "binding_bag_hat": "hat vs bag colours swapped",
}


def binding_table(metrics: dict[str, float]) -> str:
    """A Markdown table of the probes in an `evaluate_binding` result: accuracy (percent) and images."""
    lines = ["| probe | contrast caption | accuracy | images |", "|---|---|---|---|"]
    lines += [
        f"| {kind} | {_PROBE_LABELS[kind]} | {metrics[kind]:.2f} | {int(metrics[f'{kind}_n'])} |"
        for kind in PROBE_KINDS if kind in metrics
    ]
    return "\n".join(lines)
