"""Evaluate a model on a dataset split: encode captions and images, then score with `uit_reid.retrieval`.

The field's protocol: captions are the queries, images the gallery; R@1/5/10, mAP and mINP in
percent. Where the split's records carry attributes, also attribute binding (`evaluate_binding`) and,
for a model with a TIR head, whether its decoder reads the caption (`evaluate_text_use`).
`retrieval` computes the metrics from arrays and knows nothing of models; this module is the bridge.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from uit_reid import retrieval
from uit_reid.data import PROBE_KINDS, Split, binding_probes, build_eval_loaders
from uit_reid.device import autocast
from uit_reid.images import load_image
from uit_reid.model import UITModel
from uit_reid.tir import tir_errors, tir_target

__all__ = [
    "BINDING_KEYS",
    "TEXT_USE_KEYS",
    "binding_table",
    "encode_split",
    "evaluate_binding",
    "evaluate_model",
    "evaluate_text_use",
    "text_use_table",
]

BINDING_KEYS = tuple(k for kind in PROBE_KINDS for k in (kind, f"{kind}_n"))
"""What `evaluate_binding` can return: each probe's accuracy (percent) and its number of images."""

TEXT_USE_CONTRASTS = ("swapped", "empty", "other")
"""The captions `evaluate_text_use` restores with besides the true one: the garment colours swapped,
an empty caption, another person's caption."""
TEXT_USE_KEYS = (
    "text_use", "text_use_empty", "text_use_other", "text_use_n",
    *(f"tir_error_{c}" for c in ("true", *TEXT_USE_CONTRASTS)),
)
"""What `evaluate_text_use` returns: the percent of images the true caption restores better than the
swapped (``text_use``), the empty and another person's caption; the images; each caption's mean error."""


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
    if model.tir_head is not None:
        metrics.update(evaluate_text_use(model, split, batch_size, device, amp_dtype=amp_dtype, interpolation=interpolation))
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


@torch.no_grad()
def evaluate_text_use(
    model: UITModel,
    split: Split,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    interpolation: str | None = None,
    *,
    max_images: int = 512,
    seed: int = 0,
) -> dict[str, float]:
    """Does the TIR decoder read the caption? Restoration with the true caption against contrasts.

    On the split's images whose upper and lower garments differ in colour (the ``binding`` probe's
    images, the first ``max_images`` in record order), with one fixed mask per image (``seed``), the
    decoder restores the hidden patches four times: from the true caption ("a person wearing red
    jacket and black trousers"), the same caption with the two colours swapped, an empty caption and
    another person's true caption. Returns `TEXT_USE_KEYS`: ``text_use`` is the percent of images the
    true caption restores better than the swapped one (ties count half: a decoder that ignores the
    text scores 50), ``text_use_empty`` / ``text_use_other`` the same against the other contrasts,
    ``tir_error_<caption>`` the mean error (`uit_reid.tir.tir_errors`, on the model's own
    `tir_target`). ``{}`` for a model without a TIR head or a split without such images.
    """
    probes = binding_probes(split.records, seed).get("binding")
    if model.tir_head is None or probes is None:
        return {}
    n = min(len(probes), max_images)
    image_ids = probes.image_ids[:n]
    captions = _text_use_captions(probes.true[:n], probes.contrast[:n], [split.records[i].pid for i in image_ids])
    device = torch.device(device)
    transform = model.eval_transform(interpolation)
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    errors: dict[str, list[torch.Tensor]] = {name: [] for name in captions}
    with autocast(device, amp_dtype):
        for start in range(0, n, batch_size):
            rows = range(start, min(start + batch_size, n))
            images = torch.stack([
                transform(load_image(split.records[image_ids[i]].image_path, model.image_size)) for i in rows
            ]).to(device)
            masked = model.tir_input(images, generator=_masks_on(generator, device))
            target = tir_target(images, model.encoder.patch_size, model.tir_target)
            for name, texts in captions.items():
                ids = model.encoder.tokenize([texts[i] for i in rows]).to(device)
                _, tokens = model.encoder.encode_text(ids, return_tokens=True)
                errors[name].append(tir_errors(model.restore(masked, ids, tokens), target, masked.mask).cpu())
    model.train(was_training)
    err = {name: torch.cat(e) for name, e in errors.items()}
    out = {
        "text_use": retrieval.binding_accuracy(-err["true"], -err["swapped"]),
        "text_use_empty": retrieval.binding_accuracy(-err["true"], -err["empty"]),
        "text_use_other": retrieval.binding_accuracy(-err["true"], -err["other"]),
        "text_use_n": n,
    }
    out.update({f"tir_error_{name}": float(e.mean()) for name, e in err.items()})
    return out


def _text_use_captions(true: list[str], swapped: list[str], pids: list[int]) -> dict[str, list[str]]:
    """`evaluate_text_use`'s four captions per image; another person's is the nearest true caption half
    the list away whose identity differs."""
    n = len(true)
    other = [next((true[(i + n // 2 + j) % n] for j in range(n) if pids[(i + n // 2 + j) % n] != pids[i]), "")
             for i in range(n)]
    return {"true": true, "swapped": swapped, "empty": [""] * n, "other": other}


def _masks_on(generator: torch.Generator, device: torch.device) -> torch.Generator:
    """``generator`` where the masks are drawn on the CPU; a CUDA generator seeded from it elsewhere."""
    if device.type == "cpu":
        return generator
    seeded = torch.Generator(device=device)
    seeded.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
    return seeded


_PROBE_LABELS = {
    "binding": "upper vs lower colours swapped",
    "presence": "a garment colour not worn (control)",
    "binding_shoe_upper": "upper vs shoe colours swapped",
    "binding_bag_hat": "hat vs bag colours swapped",
}


def text_use_table(metrics: dict[str, float]) -> str:
    """A Markdown table of an `evaluate_text_use` result: per contrast caption, the share of images the
    true caption restores better and the mean restoration errors."""
    lines = ["| TIR restoration: true caption vs | true wins (%) | error, true | error, contrast | images |",
             "|---|---|---|---|---|"]
    n = int(metrics["text_use_n"])
    for key, contrast, label in (("text_use", "swapped", "garment colours swapped"),
                                 ("text_use_empty", "empty", "an empty caption"),
                                 ("text_use_other", "other", "another person's caption")):
        lines.append(f"| {label} | {metrics[key]:.2f} | {metrics['tir_error_true']:.4f} | "
                     f"{metrics[f'tir_error_{contrast}']:.4f} | {n} |")
    return "\n".join(lines)


def binding_table(metrics: dict[str, float]) -> str:
    """A Markdown table of the probes in an `evaluate_binding` result: accuracy (percent) and images."""
    lines = ["| probe | contrast caption | accuracy | images |", "|---|---|---|---|"]
    lines += [
        f"| {kind} | {_PROBE_LABELS[kind]} | {metrics[kind]:.2f} | {int(metrics[f'{kind}_n'])} |"
        for kind in PROBE_KINDS if kind in metrics
    ]
    return "\n".join(lines)
