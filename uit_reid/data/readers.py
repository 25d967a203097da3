"""Readers for CUHK-PEDES, ICFG-PEDES, RSTPReid and a generic JSONL format, with strict validation.

Every reader parses and validates the whole annotation file before returning anything, so bad input
raises one clear error (file, record index, id) and nothing is half-loaded. Image paths from the
annotations are normalised lexically and refused when absolute or when they climb out of the dataset
root; symlinks the *user* placed inside the root (e.g. ``imgs -> /data/imgs``) are followed as usual.
"""

from __future__ import annotations

import json
import logging
import os
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Literal

from tqdm.auto import tqdm

from uit_reid.data.records import (
    AnnotationError,
    AnnotationNotFoundError,
    Attributes,
    CorruptImageError,
    DataError,
    MissingImagesError,
    PedesDataset,
    PersonRecord,
    Split,
    UnsafePathError,
)

logger = logging.getLogger(__name__)

OnMissing = Literal["error", "skip"]
ON_MISSING: tuple[str, ...] = typing.get_args(OnMissing)
"""What `load_dataset` does about missing image files: raise, or skip them."""

JSONL_NAME = "annotations.jsonl"
"""File name of the generic JSONL annotations inside a dataset folder (what ``make_synthetic`` writes)."""


@dataclass(frozen=True)
class FormatSpec:
    """How one annotation format names its file(s), fields and splits."""

    key: str
    display_name: str
    file_names: tuple[str, ...]
    path_field: str
    id_field: str
    splits: tuple[str, ...]
    image_dir: str  # folder, relative to the root, that record paths are relative to


FORMATS: dict[str, FormatSpec] = {
    "cuhk-pedes": FormatSpec(
        "cuhk-pedes",
        "CUHK-PEDES",
        ("reid_raw.json", "caption_all.json"),  # some copies ship the same list under the second name
        "file_path",
        "id",
        ("train", "val", "test"),
        "imgs",
    ),
    "icfg-pedes": FormatSpec(
        "icfg-pedes",
        "ICFG-PEDES",
        ("ICFG-PEDES.json", "ICFG_PEDES.json"),
        "file_path",
        "id",
        ("train", "test"),
        "imgs",
    ),
    "rstpreid": FormatSpec(
        "rstpreid", "RSTPReid", ("data_captions.json",), "img_path", "id", ("train", "val", "test"), "imgs"
    ),
    "jsonl": FormatSpec("jsonl", "jsonl", (JSONL_NAME,), "image", "pid", ("train", "val", "test"), ""),
}
"""The supported annotation formats by name: file names looked for, fields, splits, image folder."""

_ALIASES = {
    "cuhk": "cuhk-pedes",
    "cuhkpedes": "cuhk-pedes",
    "icfg": "icfg-pedes",
    "icfgpedes": "icfg-pedes",
    "rstp": "rstpreid",
    "rstp-reid": "rstpreid",
    "json": "jsonl",
}

_MAX_LISTED = 5


def _normalise_format(fmt: str) -> str:
    key = fmt.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key != "auto" and key not in FORMATS:
        raise ValueError(f"unknown dataset format {fmt!r}; expected 'auto' or one of {sorted(FORMATS)}")
    return key


def _find_annotation(root: Path, fmt: str) -> tuple[str, Path]:
    """Pick the annotation file (and format) inside ``root``; explain what was looked for if none."""
    if not root.exists():
        raise AnnotationNotFoundError(f"dataset root {root} does not exist")
    if not root.is_dir():
        raise AnnotationNotFoundError(f"dataset root {root} is not a folder or an annotation file")
    keys = list(FORMATS) if fmt == "auto" else [fmt]
    found: list[tuple[str, Path]] = []
    for key in keys:
        for name in FORMATS[key].file_names:
            if (root / name).is_file():
                found.append((key, root / name))
                break
        else:
            if key == "jsonl":  # a lone *.jsonl file of any name is the user's JSONL
                others = sorted(p for p in root.glob("*.jsonl") if p.is_file())
                if len(others) == 1:
                    found.append((key, others[0]))
    if not found:
        looked = [n for k in keys for n in FORMATS[k].file_names]
        extra = " (or a single *.jsonl file)" if "jsonl" in keys else ""
        raise AnnotationNotFoundError(
            f"no annotation file found in {root}: looked for {', '.join(looked)}{extra}"
        )
    if len(found) > 1:
        names = ", ".join(p.name for _, p in found)
        raise AnnotationError(
            f"{root} holds annotation files of several formats ({names}); pass format= to choose one"
        )
    return found[0]


def _format_for_file(path: Path) -> str:
    for key, spec in FORMATS.items():
        if path.name in spec.file_names:
            return key
    return "jsonl"  # any other .json/.jsonl file holds generic records


def _decode(path: Path, raw: bytes, line: int | None = None) -> str:
    """UTF-8 text (a BOM allowed), or an `AnnotationError` naming the file, line and byte."""
    try:
        return raw.decode("utf-8-sig" if line in (None, 1) else "utf-8")
    except UnicodeDecodeError as e:
        at = f"line {line}, " if line is not None else ""
        bad = raw[e.start : e.start + 1]
        raise AnnotationError(
            f"{path} is not UTF-8 text ({at}byte {e.start}: {bad!r}); save the annotation file as UTF-8"
        ) from None


def _read_json_list(path: Path) -> list[Any]:
    """Read a JSON array (benchmark files, or generic records in a .json file)."""
    text = _decode(path, path.read_bytes())
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise AnnotationError(
            f"invalid JSON in {path}: {e.msg} at line {e.lineno} column {e.colno} (char {e.pos})"
        ) from None
    if not isinstance(data, list):
        raise AnnotationError(f"{path}: expected a JSON array of records, got {type(data).__name__}")
    return data


def _read_jsonl(path: Path) -> tuple[list[Any], list[int]]:
    """Read JSON Lines; returns the records and their 1-based line numbers (blank lines skipped)."""
    records: list[Any] = []
    lines: list[int] = []
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            line = _decode(path, raw, lineno)
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise AnnotationError(
                    f"invalid JSON in {path} at line {lineno} column {e.colno}: {e.msg}"
                ) from None
            lines.append(lineno)
    return records, lines


def safe_relative_path(raw: str) -> PurePosixPath:
    """Normalise an annotation path lexically; refuse absolute paths and ones that climb out with ``..``."""
    if PurePosixPath(raw).is_absolute() or PureWindowsPath(raw).is_absolute() or PureWindowsPath(raw).drive:
        raise ValueError("absolute paths are not allowed")
    norm = os.path.normpath(raw.replace("\\", "/"))
    parts = PurePosixPath(norm).parts
    if not parts or norm == "." or parts[0] == "..":
        raise ValueError("the path escapes the dataset root")
    return PurePosixPath(norm)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _where(path: Path, index: int, rec: Any, spec: FormatSpec, line: int | None) -> str:
    rid = rec.get(spec.id_field, "unknown") if isinstance(rec, dict) else "unknown"
    at = f" (line {line})" if line is not None else ""
    return f"{path}: record {index}{at}, id {rid!r}"


def _parse_attributes(rec: dict[str, Any], where: str) -> Attributes | None:
    """A JSONL record's optional ``attributes`` object: names to strings or nulls, else an error naming the key."""
    attrs = rec.get("attributes")
    if attrs is None:
        return None
    if not isinstance(attrs, dict):
        raise AnnotationError(f"{where}: field 'attributes' must be an object, got {type(attrs).__name__}")
    for key, value in attrs.items():
        if value is not None and not (isinstance(value, str) and value.strip()):
            raise AnnotationError(
                f"{where}: attribute {key!r} must be a non-empty string or null, got {value!r}"
            )
    return {key: value.strip() if isinstance(value, str) else None for key, value in attrs.items()}


_SplitRow = tuple[int | str, Path, list[str], Attributes | None]
"""One record of a split: (raw id, image path, captions, attributes)."""
_Row = tuple[str, int | str, Path, list[str], Attributes | None]
"""One parsed record: (split, raw id, image path, captions, attributes)."""


def _parse_records(
    raw_records: Sequence[Any], spec: FormatSpec, path: Path, base: Path, lines: Sequence[int] | None
) -> list[_Row]:
    """Validate every record; return (split, raw id, image path, captions, attributes) in file order.

    Only the JSONL format reads ``attributes``; the benchmark formats leave them ``None``.
    """
    out: list[_Row] = []
    for i, rec in enumerate(raw_records):
        line = lines[i] if lines is not None else None
        where = _where(path, i, rec, spec, line)
        if not isinstance(rec, dict):
            raise AnnotationError(f"{where}: expected an object, got {type(rec).__name__}")
        for name in ("split", "captions", spec.path_field, spec.id_field):
            if name not in rec:
                raise AnnotationError(f"{where}: missing field {name!r}")
        rid = rec[spec.id_field]
        if spec.key == "jsonl":
            if not (_is_int(rid) or (isinstance(rid, str) and rid.strip())):
                raise AnnotationError(f"{where}: field {spec.id_field!r} must be an integer or a non-empty string")
        elif not _is_int(rid):
            raise AnnotationError(f"{where}: field {spec.id_field!r} must be an integer")
        split = rec["split"]
        if split not in spec.splits:
            raise AnnotationError(f"{where}: unknown split {split!r}; {spec.display_name} splits are {spec.splits}")
        captions = rec["captions"]
        if spec.key == "jsonl" and isinstance(captions, str):
            captions = [captions]
        if not isinstance(captions, list) or not captions:
            raise AnnotationError(f"{where}: field 'captions' must be a non-empty list of strings")
        for j, c in enumerate(captions):
            if not isinstance(c, str) or not c.strip():
                raise AnnotationError(f"{where}: caption {j} is empty or not a string")
        img = rec[spec.path_field]
        if not isinstance(img, str) or not img.strip():
            raise AnnotationError(f"{where}: field {spec.path_field!r} must be a non-empty string")
        try:
            rel = safe_relative_path(img)
        except ValueError as e:
            raise UnsafePathError(f"{where}: image path {img!r} refused: {e}") from None
        attrs = _parse_attributes(rec, where) if spec.key == "jsonl" else None
        out.append((split, rid, base / rel, [c.strip() for c in captions], attrs))
    return out


def _sort_key(x: int | str) -> tuple[int, int | str]:
    return (1, x) if isinstance(x, str) else (0, x)


def _build_split(
    name: str, rows: list[_SplitRow], contiguous: bool
) -> Split:
    """Assign pids (contiguous for training, kept for evaluation) and image ids (record positions)."""
    raw_ids = sorted({rid for rid, *_ in rows}, key=_sort_key)
    if contiguous or not all(_is_int(r) for r in raw_ids):
        pid_map: dict[int | str, int] = {rid: k for k, rid in enumerate(raw_ids)}
    else:
        pid_map = {rid: int(rid) for rid in raw_ids}
    records = [
        PersonRecord(image_path=p, pid=pid_map[rid], captions=caps, image_id=k, attributes=attrs)
        for k, (rid, p, caps, attrs) in enumerate(rows)
    ]
    return Split(name=name, records=records, pid_map=pid_map)


def _describe(paths: Sequence[Path]) -> str:
    shown = ", ".join(str(p) for p in paths[:_MAX_LISTED])
    more = f" and {len(paths) - _MAX_LISTED} more" if len(paths) > _MAX_LISTED else ""
    return shown + more


def check_images_decode(paths: Iterable[Path], progress: bool = True) -> list[Path]:
    """Fully decode each image with `uit_reid.images.load_image`; return the ones it refuses (slow)."""
    from uit_reid.images import load_image

    paths = list(paths)
    bad: list[Path] = []
    for p in tqdm(paths, desc="verify images", disable=not progress or len(paths) < 1000):
        try:
            load_image(p)
        except (CorruptImageError, FileNotFoundError):
            bad.append(p)
    return bad


def load_dataset(
    root: str | os.PathLike[str],
    format: str = "auto",
    *,
    on_missing: OnMissing = "error",
    verify_images: bool = False,
    progress: bool = True,
) -> PedesDataset:
    """Load a text-to-image person retrieval dataset.

    ``root`` is the dataset folder (annotation file plus ``imgs/`` for the benchmarks; images relative
    to the folder for JSONL) or a path to the annotation file itself (``.json``/``.jsonl``).
    ``format="auto"`` picks the format from the files present and logs which. Missing image files raise
    `MissingImagesError` (``on_missing="error"``) or are dropped with a logged count
    (``"skip"``). ``verify_images=True`` also decodes every image and treats undecodable ones the same
    way (raising `CorruptImageError`). Training pids become ``0..num_classes-1``.
    """
    if on_missing not in ON_MISSING:
        raise ValueError(f"on_missing must be one of {list(ON_MISSING)}, got {on_missing!r}")
    root, ann, fmt = _locate_annotations(Path(root).expanduser(), _normalise_format(format))
    spec = FORMATS[fmt]
    base = root / spec.image_dir if spec.image_dir else root
    if ann.suffix == ".jsonl":
        raw, lines = _read_jsonl(ann)
    else:
        raw, lines = _read_json_list(ann), None
    if not raw:
        raise AnnotationError(f"{ann}: no records")
    parsed = _parse_records(raw, spec, ann, base, lines)
    parsed = _drop_unusable(parsed, ann, on_missing, "missing", [row[2] for row in parsed if not row[2].is_file()])
    if verify_images:
        corrupt = check_images_decode([row[2] for row in parsed], progress)
        parsed = _drop_unusable(parsed, ann, on_missing, "corrupt", corrupt)

    by_split: dict[str, list[_SplitRow]] = {s: [] for s in spec.splits}
    for split, rid, p, caps, attrs in parsed:
        by_split[split].append((rid, p, caps, attrs))
    splits = {
        name: (_build_split(name, rows, contiguous=(name == "train")) if rows else None)
        for name, rows in by_split.items()
    }
    if all(s is None for s in splits.values()):
        raise AnnotationError(f"{ann}: no records left after skipping missing images")
    ds = PedesDataset(
        name=spec.display_name if fmt != "jsonl" else root.resolve().name or "jsonl",
        root=root,
        format=fmt,
        annotation_file=ann,
        train=splits.get("train"),
        val=splits.get("val"),
        test=splits.get("test"),
    )
    for line in ds.summary().splitlines():  # one record a line: log arguments are escaped (uit_reid._display)
        logger.info("%s", line)
    return ds


def _locate_annotations(root: Path, fmt: str) -> tuple[Path, Path, str]:
    """(dataset folder, annotation file, format) for ``root`` (a folder or the annotation file itself)."""
    if root.is_file():
        ann = root
        if fmt == "auto":
            fmt = _format_for_file(ann)
            logger.info("load_dataset: format %r from file name %s", fmt, ann.name)
        return root.parent, ann, fmt
    detected, ann = _find_annotation(root, fmt)
    if fmt == "auto":
        logger.info("load_dataset: detected format %r from %s", detected, ann)
    return root, ann, detected


def _drop_unusable(parsed: list[_Row], ann: Path, on_missing: OnMissing, what: str, bad: list[Path]) -> list[_Row]:
    """``parsed`` without the rows of the ``bad`` images (``on_missing="skip"``), or an error naming them."""
    if not bad:
        return parsed
    if on_missing == "error":
        error: type[DataError] = MissingImagesError if what == "missing" else CorruptImageError
        raise error(f"{len(bad)} {what} image file(s) named in {ann}: {_describe(bad)}")
    logger.warning("load_dataset: skipping %d %s image(s) named in %s", len(bad), what, ann)
    bad_set = set(bad)
    return [row for row in parsed if row[2] not in bad_set]
