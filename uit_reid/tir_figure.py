"""The picture of TIR at work: a grey, half-hidden person restored in colour from the caption.

`restoration_figure` draws, for a few test images whose two garments differ in colour, the original,
the grey input with its hidden patches blanked, and the decoder's restorations from the true caption
and from the same caption with the two colours swapped. A decoder that reads the caption paints the
jacket red when the words say red, and black when they say black; one that does not paints the same
grey person twice.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

from uit_reid.data import Split, binding_probes
from uit_reid.images import load_image
from uit_reid.model import UITModel
from uit_reid.tir import patchify, to_grayscale, unpatchify

__all__ = ["restoration_figure"]

COLUMNS = ("original", "input: grey,\nhidden in white", "restored from\nthe true caption", "restored from\ncolours swapped")
"""The figure's columns, left to right."""


def _to_pixels(patches: torch.Tensor, model: UITModel) -> torch.Tensor:
    """Normalised patches ``(N, P)`` of one image -> an RGB image tensor ``(3, H, W)`` in [0, 1]."""
    image = unpatchify(patches.unsqueeze(0), model.encoder.grid_size, model.encoder.patch_size)[0]
    mean = image.new_tensor(model.image_mean).view(3, 1, 1)
    std = image.new_tensor(model.image_std).view(3, 1, 1)
    return (image * std + mean).clamp(0, 1)


def _as_patch_pixels(pred: torch.Tensor, truth: torch.Tensor, target: str) -> torch.Tensor:
    """The decoder's output as normalised pixels. A ``patch_norm`` prediction is drawn with each
    patch's true mean and spread (as MAE draws its ``norm_pix_loss`` restorations): the colour
    pattern is the decoder's, the brightness the hidden patch's."""
    if target == "pixels":
        return pred
    mean = truth.mean(dim=-1, keepdim=True)
    std = (truth.var(dim=-1, keepdim=True, unbiased=False) + 1e-6).sqrt()
    return pred * std + mean


def _tile(image: torch.Tensor, scale: int) -> Image.Image:
    array = (image.permute(1, 2, 0).numpy() * 255 + 0.5).astype("uint8")
    tile = Image.fromarray(array, mode="RGB")
    return tile.resize((tile.width * scale, tile.height * scale), Image.Resampling.NEAREST)


@torch.no_grad()
def restoration_figure(
    model: UITModel, split: Split, num_images: int = 6, seed: int = 0, scale: int = 3,
    image_ids: Sequence[int] | None = None,
) -> Image.Image:
    """The TIR picture for ``num_images`` of ``split``'s images with two differently coloured garments.

    Images are spread evenly over the ``binding`` probe's images (or given as ``image_ids``, rows of
    ``split.records`` among them); one mask per image (``seed``), the same for both captions, as
    `uit_reid.evaluation.evaluate_text_use` uses. Restored patches are drawn in colour over the grey
    visible ones. Returns a PIL image (columns `COLUMNS`, one row per image, the two captions above it).
    """
    if model.tir_head is None:
        raise ValueError("restoration_figure needs a model with a TIR head")
    probes = binding_probes(split.records, seed).get("binding")
    if probes is None:
        raise ValueError("the split has no images with two differently coloured garments (record attributes)")
    if image_ids is None:
        picks = torch.linspace(0, len(probes) - 1, min(num_images, len(probes))).round().long().tolist()
    else:
        where = {image_id: i for i, image_id in enumerate(probes.image_ids)}
        missing = [i for i in image_ids if i not in where]
        if missing:
            raise ValueError(f"image_ids {missing} are not images with two differently coloured garments")
        picks = [where[i] for i in image_ids]
    was_training = model.training
    model.eval()
    transform = model.eval_transform()
    images = torch.stack([transform(load_image(split.records[probes.image_ids[i]].image_path, model.image_size))
                          for i in picks])
    masked = model.tir_input(images, generator=torch.Generator().manual_seed(seed))
    truth = patchify(images, model.encoder.patch_size)
    gray = patchify(to_grayscale(images, model.image_mean, model.image_std), model.encoder.patch_size)
    hidden = masked.mask.unsqueeze(-1)
    restored = []
    for texts in ([probes.true[i] for i in picks], [probes.contrast[i] for i in picks]):
        ids = model.encoder.tokenize(texts)
        _, tokens = model.encoder.encode_text(ids, return_tokens=True)
        pred = _as_patch_pixels(model.restore(masked, ids, tokens).float(), truth, model.tir_target)
        restored.append(torch.where(hidden, pred, gray))
    model.train(was_training)
    white = ((1 - gray.new_tensor(model.image_mean)) / gray.new_tensor(model.image_std)).repeat(gray.shape[-1] // 3)
    blank = torch.where(hidden, white.expand_as(gray), gray)
    rows = [[truth[r], blank[r], restored[0][r], restored[1][r]] for r in range(len(picks))]
    captions = [(probes.true[i], probes.contrast[i]) for i in picks]
    return _compose(rows, captions, model, scale)


def _compose(rows: list[list[torch.Tensor]], captions: list[tuple[str, str]], model: UITModel, scale: int) -> Image.Image:
    font = ImageFont.load_default(size=13)
    tiles = [[_tile(_to_pixels(p, model), scale) for p in row] for row in rows]
    tw, th = tiles[0][0].size
    gap, text_h, head_h = 8, 36, 34
    width = len(COLUMNS) * (tw + gap) + gap
    canvas = Image.new("RGB", (max(width, 420), head_h + len(rows) * (th + text_h + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    for c, name in enumerate(COLUMNS):
        draw.multiline_text((gap + c * (tw + gap), 4), name, fill="black", font=ImageFont.load_default(size=11))
    y = head_h
    for row, (true, swapped) in zip(tiles, captions, strict=True):
        draw.text((gap, y + 2), f"true: {true.removeprefix('a person wearing ')}", fill="black", font=font)
        draw.text((gap, y + 18), f"swapped: {swapped.removeprefix('a person wearing ')}", fill="black", font=font)
        y += text_h
        for c, tile in enumerate(row):
            canvas.paste(tile, (gap + c * (tw + gap), y))
        y += th + gap
    return canvas
