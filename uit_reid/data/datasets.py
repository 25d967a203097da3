"""Torch datasets and collates: training pairs, evaluation gallery and queries, loader builders.

The tokenizer is a callable ``tokenizer(list[str]) -> LongTensor (B, L)`` passed in by the caller;
captions are tokenised per batch in the collate (faster than one by one). Collates are plain classes so
DataLoader workers can pickle them.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from uit_reid import recipe
from uit_reid.data._epochs import EpochBatchSampler, SeededItems, mix_seed
from uit_reid.data.records import CorruptImageError, Split
from uit_reid.data.samplers import build_batch_sampler
from uit_reid.images import load_image

logger = logging.getLogger(__name__)

Tokenizer = Callable[[list[str]], torch.Tensor]
ImageTransform = Callable[[Image.Image], torch.Tensor]
OnCorrupt = Literal["error", "skip"]


class TrainDataset(Dataset):
    """Training pairs: one item per (image, caption), as in IRRA/UIT.

    Items are dicts ``{"image": Tensor(3,H,W), "caption": str, "pid": int, "image_id": int}``.
    ``text_augment`` (e.g. `uit_reid.augment.TextAugment`) is applied to the caption.
    ``on_corrupt="skip"`` replaces an undecodable image by another image of the same person (or the
    next one) and logs a warning once per path; ``"error"`` raises `CorruptImageError`.
    ``image_size`` (height, width), when given, lets `uit_reid.images.load_image` decode large files
    at a reduced size no smaller than twice it.
    """

    def __init__(
        self,
        split: Split,
        transform: ImageTransform,
        text_augment: Callable[[str], str] | None = None,
        on_corrupt: OnCorrupt = "error",
        image_size: Sequence[int] | None = None,
    ) -> None:
        if on_corrupt not in ("error", "skip"):
            raise ValueError(f"on_corrupt must be 'error' or 'skip', got {on_corrupt!r}")
        self.split = split
        self.transform = transform
        self.text_augment = text_augment
        self.on_corrupt = on_corrupt
        self.image_size = tuple(image_size) if image_size is not None else None
        self.pairs: list[tuple[int, int]] = [
            (r.image_id, j) for r in split.records for j in range(len(r.captions))
        ]
        self.pids: list[int] = [split.records[i].pid for i, _ in self.pairs]
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.pairs)

    def _image(self, image_id: int) -> Image.Image:
        records = self.split.records
        if image_id not in self._bad:
            try:
                return load_image(records[image_id].image_path, self.image_size)
            except CorruptImageError:
                if self.on_corrupt == "error":
                    raise
                self._bad.add(image_id)
                logger.warning("skipping corrupt image %s", records[image_id].image_path)
        pid = records[image_id].pid  # skip mode: same person first, then the following images
        same = (r.image_id for r in records if r.pid == pid and r.image_id != image_id)
        following = ((image_id + k) % len(records) for k in range(1, len(records)))
        for cand in itertools.chain(same, following):
            if cand in self._bad:
                continue
            try:
                return load_image(records[cand].image_path, self.image_size)
            except CorruptImageError:
                self._bad.add(cand)
                logger.warning("skipping corrupt image %s", records[cand].image_path)
        raise CorruptImageError(f"no decodable image left in split {self.split.name!r}")

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id, j = self.pairs[index]
        rec = self.split.records[image_id]
        caption = rec.captions[j]
        if self.text_augment is not None:
            caption = self.text_augment(caption)
        return {
            "image": self.transform(self._image(image_id)),
            "caption": caption,
            "pid": rec.pid,
            "image_id": rec.image_id,
            # drawn from the item's RNG stream so batch-level augmentation (token corruption in
            # `TrainCollate`) is as reproducible as the per-item transforms
            "aug_seed": int(torch.randint(0, 2**62, (1,)).item()),
        }


class TrainCollate:
    """Stack images and tokenise captions into the batch dict ``UITModel.forward`` takes.

    ``token_augment(ids, generator)`` (e.g. `uit_reid.augment.TokenCorruption`) edits the token ids;
    when the items carry an ``aug_seed`` each caption gets its own generator seeded from it, so a
    sample's corruption does not depend on the batch (or the rank) it lands in.
    """

    def __init__(self, tokenizer: Tokenizer, token_augment: Callable[..., torch.Tensor] | None = None) -> None:
        self.tokenizer = tokenizer
        self.token_augment = token_augment

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids = self.tokenizer([it["caption"] for it in items]).long()
        if self.token_augment is not None:
            if all("aug_seed" in it for it in items):  # per sample: independent of the batch it lands in
                ids = torch.cat([
                    self.token_augment(ids[i : i + 1], torch.Generator().manual_seed(it["aug_seed"]))
                    for i, it in enumerate(items)
                ])
            else:
                ids = self.token_augment(ids, None)
        return {
            "images": torch.stack([it["image"] for it in items]),
            "text_ids": ids,
            "pids": torch.tensor([it["pid"] for it in items], dtype=torch.long),
            "image_ids": torch.tensor([it["image_id"] for it in items], dtype=torch.long),
        }


class GalleryDataset(Dataset):
    """Evaluation gallery: items ``{"images": Tensor, "pids": int, "image_ids": int}``, one per image.

    The default collate turns a list of items into a batch dict with the same keys. A corrupt gallery
    image always raises (dropping it would shift every column of the similarity matrix); use
    ``load_dataset(..., verify_images=True, on_missing="skip")`` to drop such images up front.
    ``image_size`` is the decode hint described in `TrainDataset`.
    """

    def __init__(self, split: Split, transform: ImageTransform, image_size: Sequence[int] | None = None) -> None:
        self.split = split
        self.transform = transform
        self.image_size = tuple(image_size) if image_size is not None else None

    def __len__(self) -> int:
        return len(self.split.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = self.split.records[index]
        image = load_image(rec.image_path, self.image_size)
        return {"images": self.transform(image), "pids": rec.pid, "image_ids": rec.image_id}


class QueryDataset(Dataset):
    """Evaluation queries: items ``{"caption": str, "pid": int, "image_id": int}``, one per caption."""

    def __init__(self, split: Split) -> None:
        q = split.queries
        self.captions, self.pids, self.image_ids = q.captions, q.pids, q.image_indices

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"caption": self.captions[index], "pid": self.pids[index], "image_id": self.image_ids[index]}


class QueryCollate:
    """Tokenise a batch of queries: ``{"text_ids": (B, L), "pids": (B,), "image_ids": (B,)}``."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return {
            "text_ids": self.tokenizer([it["caption"] for it in items]).long(),
            "pids": torch.tensor([it["pid"] for it in items], dtype=torch.long),
            "image_ids": torch.tensor([it["image_id"] for it in items], dtype=torch.long),
        }


def build_train_loader(
    split: Split,
    tokenizer: Tokenizer,
    image_size: tuple[int, int] = recipe.IMAGE_SIZE,
    batch_size: int = 128,
    *,
    sampler: str = recipe.SAMPLER,
    num_instances: int = recipe.NUM_INSTANCES,
    num_workers: int = 4,
    text_augment_p: float = 0.2,
    token_augment: Callable[..., torch.Tensor] | None = None,
    transform: ImageTransform | None = None,
    seed: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    on_corrupt: OnCorrupt = "error",
    pin_memory: bool | None = None,
    batch_multiple: int = 1,
) -> DataLoader:
    """A training DataLoader with the UIT image and text augmentations and a DDP-aware batch sampler.

    ``batch_size`` is per process. ``sampler="identity_groups"`` (the default, as in the trainer and
    the authors' code) gives identity groups of random size ``1..num_instances``
    (`IdentityGroupSampler`); ``"identity"`` gives ``batch_size // num_instances`` identities x
    ``num_instances`` pairs per batch; ``"random"`` gives random pairs. Call
    ``loader.batch_sampler.set_epoch(epoch)`` before each epoch (``set_epoch(epoch, start=b)`` skips
    the first ``b`` batches, to resume mid-epoch). Every sample's augmentation is drawn from its own
    RNG stream seeded by ``(seed, epoch, index)`` (see `uit_reid.data._epochs`), so an epoch is the
    same whatever the number of workers and whether or not the run was resumed. ``batch_multiple``
    cuts each epoch to a multiple of that many batches (for gradient accumulation). ``token_augment``
    edits each batch's token ids, e.g. ``uit_reid.augment.TokenCorruption.for_tokenizer(tokenizer)``
    (the authors' caption corruption, on in the trainer's paper recipe).
    """
    from uit_reid import augment

    hint = image_size if transform is None else None  # a caller's transform may want more pixels
    if transform is None:
        transform = augment.build_train_transform(image_size)
    text_aug = augment.TextAugment(p=text_augment_p) if text_augment_p > 0 else None
    ds = TrainDataset(split, transform, text_aug, on_corrupt=on_corrupt, image_size=hint)
    plan = build_batch_sampler(sampler, ds.pids, batch_size, num_instances, seed=seed, rank=rank, world_size=world_size)
    return DataLoader(
        SeededItems(ds, seed),
        batch_sampler=EpochBatchSampler(plan, batch_multiple),
        collate_fn=TrainCollate(tokenizer, token_augment),
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        persistent_workers=num_workers > 0,
        # a private generator: starting an epoch must not draw from the global RNG, or a resumed
        # run (which starts one mid-epoch) would drift from an uninterrupted one
        generator=torch.Generator().manual_seed(mix_seed(seed)),
    )


def build_eval_loaders(
    split: Split,
    tokenizer: Tokenizer,
    image_size: tuple[int, int] = recipe.IMAGE_SIZE,
    batch_size: int = 256,
    *,
    num_workers: int = 4,
    transform: ImageTransform | None = None,
) -> tuple[DataLoader, DataLoader]:
    """(gallery loader, query loader) for one evaluation split, in record order (no shuffling)."""
    hint = image_size if transform is None else None  # a caller's transform may want more pixels
    if transform is None:
        from uit_reid import augment

        transform = augment.build_eval_transform(image_size)
    gallery = DataLoader(GalleryDataset(split, transform, hint), batch_size=batch_size, num_workers=num_workers,
                         pin_memory=torch.cuda.is_available())
    queries = DataLoader(
        QueryDataset(split), batch_size=batch_size, num_workers=0, collate_fn=QueryCollate(tokenizer)
    )
    return gallery, queries
