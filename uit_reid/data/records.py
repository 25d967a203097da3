"""Plain data types for annotations: one record per image, splits, a whole dataset, and the errors.

These types know nothing about torch or file formats: readers build them, torch datasets consume them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from uit_reid._errors import CorruptImageError, DataError

__all__ = [
    "AnnotationError",
    "Attributes",
    "AnnotationNotFoundError",
    "CorruptImageError",
    "DataError",
    "Gallery",
    "MissingImagesError",
    "PedesDataset",
    "PersonRecord",
    "Queries",
    "Split",
    "UnsafePathError",
]


Attributes = Mapping[str, str | None]
"""What a record says the person wears: attribute name -> value, ``None`` for "absent" (no bag, no hat)."""


class AnnotationNotFoundError(DataError, FileNotFoundError):
    """No annotation file of a known format was found (the message lists the names looked for)."""


class AnnotationError(DataError, ValueError):
    """An annotation file is not valid JSON, or a record in it is malformed (file, index and id named)."""


class UnsafePathError(AnnotationError):
    """An annotation names an image path that is absolute or escapes the dataset root."""


class MissingImagesError(DataError, FileNotFoundError):
    """Image files named by the annotations do not exist (the first few and the count are named)."""


@dataclass(frozen=True)
class PersonRecord:
    """One image of one person with its captions.

    ``image_id`` is the record's position in its split, so ``split.records[r.image_id] is r`` and gallery
    column ``j`` is image ``j``. ``attributes`` (JSONL only, optional) names what the person wears,
    e.g. ``{"upper_type": "jacket", "upper_colour": "red", ...}`` (values are strings or ``None`` for
    "absent"); `uit_reid.evaluation.evaluate_binding` builds its probe captions from it. Readers of the
    benchmark formats leave it ``None``.
    """

    image_path: Path
    pid: int
    captions: list[str]
    image_id: int
    attributes: Attributes | None = None


@dataclass(frozen=True)
class Gallery:
    """The evaluation gallery: one entry per image."""

    image_paths: list[Path]
    pids: list[int]

    def __len__(self) -> int:
        return len(self.image_paths)


@dataclass(frozen=True)
class Queries:
    """The evaluation queries: one entry per caption, with the index of the image it describes."""

    captions: list[str]
    pids: list[int]
    image_indices: list[int]

    def __len__(self) -> int:
        return len(self.captions)


@dataclass
class Split:
    """The records of one split (train, val or test).

    ``pid_map`` maps the identity as written in the annotation file (an int or a string) to the ``pid``
    used in the records: contiguous ``0..K-1`` for the training split, identity (or an order-preserving
    relabelling of non-integer ids) for evaluation splits.
    """

    name: str
    records: list[PersonRecord]
    pid_map: dict[int | str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_images(self) -> int:
        """Images in the split (one record each)."""
        return len(self.records)

    @property
    def num_captions(self) -> int:
        """Captions over all images of the split."""
        return sum(len(r.captions) for r in self.records)

    @property
    def num_ids(self) -> int:
        """Distinct identities in the split."""
        return len({r.pid for r in self.records})

    @property
    def gallery(self) -> Gallery:
        """Image paths and pids, one per image, in record order."""
        return Gallery([r.image_path for r in self.records], [r.pid for r in self.records])

    @property
    def queries(self) -> Queries:
        """Captions, pids and source-image indices, one per caption, in record order."""
        captions: list[str] = []
        pids: list[int] = []
        image_indices: list[int] = []
        for r in self.records:
            for c in r.captions:
                captions.append(c)
                pids.append(r.pid)
                image_indices.append(r.image_id)
        return Queries(captions, pids, image_indices)


@dataclass
class PedesDataset:
    """A text-to-image person retrieval dataset: up to three splits and the number of training ids.

    A split is ``None`` where the dataset has none (ICFG-PEDES has no val split).
    """

    name: str
    root: Path
    format: str
    annotation_file: Path
    train: Split | None
    val: Split | None
    test: Split | None

    @property
    def num_classes(self) -> int:
        """Number of training identities (the classifier width); 0 without a training split."""
        return self.train.num_ids if self.train is not None else 0

    def splits(self) -> dict[str, Split]:
        """The splits that exist, by name."""
        return {s.name: s for s in (self.train, self.val, self.test) if s is not None}

    def summary(self) -> str:
        """One line per split: ids, images, captions."""
        lines = [f"{self.name} ({self.format}) at {self.root}"]
        for s in (self.train, self.val, self.test):
            if s is not None:
                lines.append(
                    f"  {s.name:5s}: {s.num_ids:6d} ids {s.num_images:7d} images {s.num_captions:7d} captions"
                )
        return "\n".join(lines)
