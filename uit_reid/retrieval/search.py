"""Search your own images: encode a folder into a GalleryIndex, query it with text, draw the results.

Encoders come in as callables, so this module works with any model (and imports none):
``image_encoder`` maps a float batch (B, 3, H, W) to features (B, D), ``transform`` maps a PIL image
to a (3, H, W) tensor, ``text_encoder`` maps a list of strings to (B, D) features. Features may be raw
pooled outputs; the index L2-normalises them.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from tqdm.auto import tqdm

from uit_reid.images import CorruptImageError, load_image
from uit_reid.retrieval.index import GalleryIndex

__all__ = [
    "IMAGE_EXTENSIONS",
    "Hit",
    "build_index_from_folder",
    "encode_image_files",
    "encode_image_folder",
    "list_images",
    "ranked_hits",
    "render_results",
    "search_text",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
"""File endings taken as images when a folder is indexed."""


@dataclass(frozen=True)
class Hit:
    """One search result: its rank, the gallery id, its cosine score and what is known about it.

    The one hit type of the package: `search_text` returns it, the service's engine ranks with it and
    the service's JSON hit is derived from its ``rank``, ``id`` and ``score`` fields (their
    ``description`` metadata documents the API).
    """

    rank: int = field(metadata={"description": "1-based rank"})
    id: str | int = field(metadata={"description": "the gallery item's id in the index (an image path or a number)"})
    score: float = field(metadata={"description": "cosine similarity between the query and the image"})
    number: int | None = None
    """The item's position in `GalleryIndex.ids` (None where the caller did not ask for it)."""
    path: str | None = None
    """The image path, for string ids."""
    pid: Any = None
    """The identity, where ``pids`` were given to `search_text`."""
    correct: bool | None = None
    """Whether ``pid`` is the query's, where ``query_pids`` were given too."""


def ranked_hits(
    scores: Sequence[float],
    ids: Sequence[Any],
    *,
    numbers: Sequence[int] | None = None,
    pid_of: Callable[[Any], Any] | None = None,
    query_pid: Any = None,
) -> list[Hit]:
    """One query's row of `GalleryIndex.search` results as ranked `Hit` s, best first.

    The padding an approximate index returns (id ``None`` or ``-1`` with a non-finite score) is
    dropped; numpy ids become plain ``int`` s; string ids are image paths. ``numbers`` are the hits'
    positions in the index (``Hit.number``; ``search(..., positions=True)``); ``pid_of`` gives an id's pid and, with
    ``query_pid``, ``Hit.correct``.
    """
    hits: list[Hit] = []
    for i, (score, id_) in enumerate(zip(scores, ids)):
        number = None if numbers is None else int(numbers[i])
        if id_ is None or not np.isfinite(score) or (number is not None and number < 0):
            continue
        id_ = id_ if isinstance(id_, str) else int(id_)
        pid = pid_of(id_) if pid_of is not None else None
        correct = bool(pid == query_pid) if query_pid is not None and pid is not None else None
        hits.append(Hit(len(hits) + 1, id_, float(score), number=number,
                        path=id_ if isinstance(id_, str) else None, pid=pid, correct=correct))
    return hits


def list_images(folder: str | os.PathLike[str], extensions: Iterable[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Image files under ``folder`` (recursively), by extension (case-insensitive), sorted.

    Paths are absolute (symlinks kept as named), so an index whose ids are these paths finds its
    images from any working directory.
    """
    root = Path(folder).absolute()
    if not root.is_dir():
        raise FileNotFoundError(f"folder {root} does not exist or is not a directory")
    exts = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in exts)


def _load(path: Path, image_size: Sequence[int] | None = None) -> Image.Image | None:
    """`load_image`, or None (logged) for a missing or undecodable file, or one that is not a regular file
    (a FIFO would block the reader for ever)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise OSError(f"{path} is not a regular file")
        return load_image(path, image_size)
    except (CorruptImageError, OSError) as err:
        logger.warning("skipping unreadable image %s: %s", path, err)
        return None


class _FolderImages(torch.utils.data.Dataset):
    """Decoded, transformed images of a file list; ``None`` in place of an unreadable file.

    A map-style dataset so a `DataLoader` can decode in worker processes while the model encodes.
    """

    def __init__(
        self,
        files: Sequence[Path],
        transform: Callable[[Image.Image], torch.Tensor],
        image_size: Sequence[int] | None,
    ) -> None:
        self.files = list(files)
        self.transform = transform
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None]:
        img = _load(self.files[index], self.image_size)
        if img is None:
            return index, None
        t = self.transform(img)
        if not isinstance(t, torch.Tensor) or t.ndim != 3:
            raise ValueError(f"transform must return a (3, H, W) tensor, got {getattr(t, 'shape', type(t))}")
        return index, t


def _collate_readable(items: list[tuple[int, torch.Tensor | None]]) -> tuple[list[int], torch.Tensor | None, list[int]]:
    """(indices of the readable images, their stacked tensors or None, indices of unreadable ones)."""
    readable = [(i, t) for i, t in items if t is not None]
    skipped = [i for i, t in items if t is None]
    if not readable:
        return [], None, skipped
    try:
        batch = torch.stack([t for _, t in readable])
    except RuntimeError as err:
        raise ValueError(f"transform returned tensors of different shapes in one batch: {err}") from err
    return [i for i, _ in readable], batch, skipped


@torch.no_grad()
def encode_image_files(
    files: Sequence[str | os.PathLike[str]],
    image_encoder: Callable[[torch.Tensor], torch.Tensor],
    transform: Callable[[Image.Image], torch.Tensor],
    batch_size: int = 64,
    device: str | torch.device | None = None,
    progress: bool = True,
    image_size: Sequence[int] | None = None,
    num_workers: int = 0,
    desc: str = "encoding images",
) -> tuple[np.ndarray, list[str], list[str]]:
    """Encode the images ``files`` in batches, in order; unreadable ones are skipped (and logged).

    Images are decoded and transformed by a `DataLoader` with ``num_workers`` worker processes
    (``0``: in this process), so decoding overlaps encoding; batches go to ``device`` from pinned
    memory with non-blocking copies when it is a GPU. ``image_size`` (height, width), when given, is
    the smallest size ``transform`` needs: large files are then decoded at a reduced size (see
    `uit_reid.images.load_image`). Returns ``(features, paths, skipped)``: float32 (N, D) features
    of the readable images (``(0, 0)`` when none was), their paths as strings and the paths that
    could not be read.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be 0 or more, got {num_workers}")
    files = [Path(f) for f in files]
    target = torch.device(device) if device is not None else None
    loader = torch.utils.data.DataLoader(
        _FolderImages(files, transform, image_size),
        batch_size=batch_size,
        num_workers=num_workers if files else 0,
        collate_fn=_collate_readable,
        pin_memory=target is not None and target.type == "cuda",
    )
    feats: list[np.ndarray] = []
    paths: list[str] = []
    skipped: list[str] = []
    with tqdm(total=len(files), desc=desc, unit="img", disable=not progress) as bar:
        for indices, x, unreadable in loader:
            skipped.extend(str(files[i]) for i in unreadable)
            bar.update(len(indices) + len(unreadable))
            if x is None:
                continue
            if target is not None:
                x = x.to(target, non_blocking=True)
            out = image_encoder(x)
            if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != x.shape[0]:
                shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ValueError(f"image_encoder must return a ({x.shape[0]}, D) tensor, got {shape}")
            feats.append(out.detach().float().cpu().numpy())
            paths.extend(str(files[i]) for i in indices)
    if not feats:
        return np.zeros((0, 0), np.float32), paths, skipped
    return np.concatenate(feats, axis=0).astype(np.float32, copy=False), paths, skipped


def encode_image_folder(
    folder: str | os.PathLike[str],
    image_encoder: Callable[[torch.Tensor], torch.Tensor],
    transform: Callable[[Image.Image], torch.Tensor],
    batch_size: int = 64,
    extensions: Iterable[str] = IMAGE_EXTENSIONS,
    device: str | torch.device | None = None,
    progress: bool = True,
    image_size: Sequence[int] | None = None,
    num_workers: int = 0,
) -> tuple[np.ndarray, list[str], list[str]]:
    """Encode every image under ``folder`` (`list_images`) with `encode_image_files`.

    Returns ``(features, paths, skipped)``: float32 (N, D) features of the readable images, their
    paths (as strings, sorted) and the paths that could not be read (skipped, and logged).
    """
    files = list_images(folder, extensions)
    if not files:
        raise ValueError(f"no images with extensions {tuple(extensions)} under {folder}")
    feats, paths, skipped = encode_image_files(
        files, image_encoder, transform, batch_size=batch_size, device=device, progress=progress,
        image_size=image_size, num_workers=num_workers,
    )
    if skipped:
        logger.warning("skipped %d unreadable image(s) of %d under %s", len(skipped), len(files), folder)
    if not paths:
        raise ValueError(f"none of the {len(files)} images under {folder} could be read")
    return feats, paths, skipped


def build_index_from_folder(
    folder: str | os.PathLike[str],
    image_encoder: Callable[[torch.Tensor], torch.Tensor],
    transform: Callable[[Image.Image], torch.Tensor],
    *,
    kind: str = "flat",
    fingerprint: str | None = None,
    batch_size: int = 64,
    extensions: Iterable[str] = IMAGE_EXTENSIONS,
    device: str | torch.device | None = None,
    progress: bool = True,
    image_size: Sequence[int] | None = None,
    num_workers: int = 0,
    **index_kwargs: Any,
) -> GalleryIndex:
    """Encode a folder of images into a new `GalleryIndex` whose ids are the image paths.

    Unreadable files are skipped and counted in the log; ``num_workers`` decode in parallel (see
    `encode_image_folder`); ``index_kwargs`` go to ``GalleryIndex``.
    """
    feats, paths, skipped = encode_image_folder(
        folder,
        image_encoder,
        transform,
        batch_size=batch_size,
        extensions=extensions,
        device=device,
        progress=progress,
        image_size=image_size,
        num_workers=num_workers,
    )
    index = GalleryIndex(feats.shape[1], kind, fingerprint=fingerprint, **index_kwargs)
    index.add(feats, paths)
    logger.info("indexed %d images from %s (%d skipped)", len(paths), folder, len(skipped))
    return index


@torch.no_grad()
def search_text(
    index: GalleryIndex,
    text_encoder: Callable[[list[str]], torch.Tensor],
    queries: str | Sequence[str],
    k: int = 10,
    *,
    fingerprint: str | None = None,
    batch_size: int = 256,
    pids: Mapping[Any, Any] | Callable[[Any], Any] | None = None,
    query_pids: Sequence[Any] | None = None,
    rerank: Callable[[np.ndarray], np.ndarray] | None = None,
    candidates: int = 100,
) -> list[list[Hit]]:
    """Top-``k`` gallery hits for each text query.

    ``rerank`` / ``candidates``: exact re-ranking of that many candidates per query from their full
    vectors (`GalleryIndex.search`; e.g. `uit_reid.retrieval.ShardVectors` for a compressed index).

    ``pids`` (a mapping or a function from gallery id to pid) fills ``Hit.pid``; with ``query_pids``
    as well, ``Hit.correct`` says whether the hit shares the query's pid. String ids are taken as
    image paths (``Hit.path``).
    """
    if isinstance(queries, str):
        queries = [queries]
    queries = list(queries)
    if not queries or not all(isinstance(q, str) for q in queries):
        raise ValueError("queries must be a string or a non-empty sequence of strings")
    if query_pids is not None and len(query_pids) != len(queries):
        raise ValueError(f"query_pids has {len(query_pids)} entries for {len(queries)} queries")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    parts = []
    for s in range(0, len(queries), batch_size):
        out = text_encoder(queries[s : s + batch_size])
        if not isinstance(out, torch.Tensor) or out.ndim != 2:
            raise ValueError(
                f"text_encoder must return a (B, D) tensor, got {getattr(out, 'shape', type(out))}"
            )
        parts.append(out.detach().float().cpu())
    scores, ids = index.search(torch.cat(parts), k, fingerprint=fingerprint, rerank=rerank, candidates=candidates)

    def pid_of(id_: Any) -> Any:
        return pids(id_) if callable(pids) else pids.get(id_)  # type: ignore[union-attr]

    return [
        ranked_hits(scores[qi], ids[qi], pid_of=pid_of if pids is not None else None,
                    query_pid=query_pids[qi] if query_pids is not None else None)
        for qi in range(len(queries))
    ]


GREEN = (46, 160, 67)
RED = (215, 48, 39)
GREY = (150, 150, 150)
FONT_SIZE = 14
"""Pixel size of the text in `render_results` (Pillow's bundled font): at its 10-px default spaces vanish."""
MARKS = {True: "right", False: "wrong"}
"""The word under a hit whose correctness is known: the border colour alone fails colour-blind readers."""
LEGEND = "right: the person described (green border); wrong: someone else (red border)"


def _wrap(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: float) -> list[str]:
    """``text`` in lines no wider than ``width`` pixels in ``font`` (a longer word gets a line of its own)."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


def render_results(
    query: str,
    hits: Sequence[Hit],
    *,
    columns: int | None = None,
    thumb_size: tuple[int, int] = (192, 96),
    border: int = 4,
    images: Sequence[Image.Image | None] | None = None,
) -> Image.Image:
    """A grid of the top-k hit images with their ranks and scores under the wrapped query text.

    Where correctness is known, a hit is marked twice, by a word under it ("right"/"wrong") and by
    its border (green/red), and a legend says so; borders are grey where it is unknown. Text is
    `FONT_SIZE` pixels. Images come from ``images`` when given, otherwise from ``Hit.path``;
    missing ones are drawn as a grey placeholder. ``thumb_size`` is (height, width) like every
    size in the package, person-shaped by default.
    """
    if not hits:
        raise ValueError("hits is empty: nothing to render")
    if images is not None and len(images) != len(hits):
        raise ValueError(f"images has {len(images)} entries for {len(hits)} hits")
    th, tw = thumb_size
    if tw < 8 or th < 8 or border < 0:
        raise ValueError(f"thumb_size (height, width) must be at least 8x8 and border >= 0, got {thumb_size}, {border}")
    cols = columns or min(len(hits), 10)
    if cols < 1:
        raise ValueError(f"columns must be positive, got {columns}")
    rows = -(-len(hits) // cols)
    font = ImageFont.load_default(size=FONT_SIZE)
    ascent, descent = font.getmetrics()
    pad, line_h = 6, ascent + descent + 2
    marked = any(hit.correct is not None for hit in hits)
    label_h = line_h * (2 if marked else 1)
    cell_w = max(tw + 2 * border, int(font.getlength(f"{len(hits)}  0.000")) + 2)
    cell_h = th + 2 * border + label_h
    width = max(cols * (cell_w + pad) + pad, 240)
    lines = _wrap(query, font, width - 2 * pad)
    legend = _wrap(LEGEND, font, width - 2 * pad) if marked else []
    header = (len(lines) + len(legend)) * line_h + 2 * pad + (pad if legend else 0)
    canvas = Image.new("RGB", (width, header + rows * (cell_h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((pad, pad + line_h * i), line, fill="black", font=font)
    for i, line in enumerate(legend):
        draw.text((pad, 2 * pad + line_h * (len(lines) + i)), line, fill=(90, 90, 90), font=font)
    for i, hit in enumerate(hits):
        r, c = divmod(i, cols)
        img = images[i] if images is not None else (_load(Path(hit.path), (th, tw)) if hit.path else None)
        _draw_hit(canvas, (pad + c * (cell_w + pad), header + r * (cell_h + pad)), i + 1, hit, img,
                  thumb_size, border, font)
    return canvas


def _draw_hit(
    canvas: Image.Image, at: tuple[int, int], rank: int, hit: Hit, img: Image.Image | None,
    thumb_size: tuple[int, int], border: int, font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
) -> None:
    """One tile of `render_results` at ``at``: the bordered thumbnail, rank and score, the right/wrong word."""
    (th, tw), (x0, y0) = thumb_size, at
    ascent, descent = font.getmetrics()
    draw = ImageDraw.Draw(canvas)
    color = GREY if hit.correct is None else (GREEN if hit.correct else RED)
    draw.rectangle([x0, y0, x0 + tw + 2 * border - 1, y0 + th + 2 * border - 1], fill=color)
    if img is None:
        thumb = Image.new("RGB", (tw, th), (220, 220, 220))
        ImageDraw.Draw(thumb).text((4, th // 2), "missing", fill="black", font=font)
    else:
        thumb = img.convert("RGB").resize((tw, th))
    canvas.paste(thumb, (x0 + border, y0 + border))
    label_y = y0 + th + 2 * border + 1
    draw.text((x0, label_y), f"{rank}  {hit.score:.3f}", fill="black", font=font)
    if hit.correct is not None:
        draw.text((x0, label_y + ascent + descent + 2), MARKS[hit.correct], fill="black", font=font)
