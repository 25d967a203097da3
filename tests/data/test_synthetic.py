"""Synthetic pedestrians: deterministic bytes, disjoint splits, captions true to the drawn attributes."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from uit_reid.data import _world as vocab
from uit_reid.data import load_dataset, make_synthetic
from uit_reid.data import synthetic as syn
from uit_reid.data.synthetic import make_caption, render_person, sample_identities


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("syn")
    make_synthetic(root, num_ids=20, images_per_id=3, seed=7, num_val_ids=4, num_test_ids=6, progress=False)
    return root


def test_deterministic_bytes_and_workers(tiny: Path, tmp_path: Path) -> None:
    again = make_synthetic(tmp_path / "a", num_ids=20, images_per_id=3, seed=7, num_val_ids=4, num_test_ids=6,
                           workers=2, progress=False)
    assert again == tmp_path / "a" / "annotations.jsonl"
    assert _tree(tiny) == _tree(tmp_path / "a")
    assert len(_tree(tiny)) == 20 * 3 + 2  # images + annotations + marker, no temporary files left
    other = make_synthetic(tmp_path / "b", num_ids=20, images_per_id=3, seed=8, num_val_ids=4, num_test_ids=6,
                           progress=False)
    assert other.read_bytes() != again.read_bytes()


def test_splits_disjoint_and_loadable(tiny: Path) -> None:
    ds = load_dataset(tiny)
    assert ds.format == "jsonl"
    assert (ds.train.num_ids, ds.val.num_ids, ds.test.num_ids) == (10, 4, 6)
    assert (ds.train.num_images, ds.test.num_captions) == (30, 6 * 3 * 2)
    assert ds.num_classes == 10 and sorted({r.pid for r in ds.train.records}) == list(range(10))
    raw = [json.loads(line) for line in (tiny / "annotations.jsonl").read_text().splitlines()]
    by_split: dict[str, set[int]] = {}
    for r in raw:
        by_split.setdefault(r["split"], set()).add(r["pid"])
    assert not (by_split["train"] & by_split["test"]) and not (by_split["val"] & by_split["test"])
    assert not (by_split["train"] & by_split["val"])
    with Image.open(tiny / raw[0]["image"]) as im:
        assert im.size == (64, 192) and im.mode == "RGB"


def test_split_sizes_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="split sizes do not fit"):
        make_synthetic(tmp_path, num_ids=5, num_test_ids=4, num_val_ids=2, progress=False)


_NOUNS: list[tuple[str, str, str]] = sorted(
    [(w, "upper", t) for t, ws in vocab.UPPER_WORDS.items() for w in ws]
    + [(w, "lower", t) for t, ws in vocab.LOWER_WORDS.items() for w in ws]
    + [(w, "shoes", "") for w in vocab.SHOE_WORDS]
    + [(w, "bag", t) for t, ws in vocab.BAG_WORDS.items() for w in ws]
    + [(w, "hat", "") for w in vocab.HAT_WORDS],
    key=lambda x: -len(x[0]),
)
_COLOUR = {w: c for c, ws in vocab.COLOUR_WORDS.items() for w in ws}


def _check_caption(caption: str, a: dict) -> None:
    """Every '<colour> <item>' phrase must match the person; both garments must be named."""
    text = caption.lower()
    seen = set()
    pattern = r"\b(" + "|".join(_COLOUR) + r") (" + "|".join(re.escape(n) for n, _, _ in _NOUNS) + r")\b"
    for m in re.finditer(pattern, text):
        colour, noun = _COLOUR[m.group(1)], m.group(2)
        _, slot, kind = next(x for x in _NOUNS if x[0] == noun)
        seen.add(slot)
        expect = {"upper": a["upper_colour"], "lower": a["lower_colour"], "shoes": a["shoes_colour"],
                  "bag": a["bag_colour"], "hat": a["hat_colour"]}[slot]
        assert colour == expect, (caption, slot, a)
        if slot == "upper":
            assert kind == a["upper_type"], (caption, a)
        if slot == "lower":
            assert kind == a["lower_type"], (caption, a)
        if slot == "bag":
            assert kind == a["bag"], (caption, a)
    assert {"upper", "lower"} <= seen, caption
    for length in ("long", "short"):
        if re.search(rf"\b{length} (\w+ )?hair", text):
            assert a["hair_length"] == length, (caption, a)
    for hc in vocab.HAIR_COLOURS:
        if f"{hc} hair" in text:
            assert a["hair_colour"] == hc, (caption, a)
    for tone, words in vocab.SKIN_WORDS.items():
        if any(f"{w} skin" in text for w in words):
            assert a["skin"] == tone, (caption, a)
    if a["bag"] is None:
        assert not any(w in text for ws in vocab.BAG_WORDS.values() for w in ws), caption
    if a["hat_colour"] is None:
        assert not re.search(r"\b(hat|cap)\b", text), caption


def test_written_captions_match_attributes(tiny: Path) -> None:
    for line in (tiny / "annotations.jsonl").read_text().splitlines():
        rec = json.loads(line)
        assert len(rec["captions"]) == 2 and rec["captions"][0] != rec["captions"][1]
        for c in rec["captions"]:
            _check_caption(c, rec["attributes"])


def test_many_captions_match_and_vary() -> None:
    ids = sample_identities(150, random.Random(3))
    rng = random.Random(0)
    caps = [make_caption(a, rng) for a in ids for _ in range(3)]
    for a, c in zip([a for a in ids for _ in range(3)], caps, strict=True):
        _check_caption(c, a)
    assert len(set(caps)) == len(caps)
    openings = {c.split()[0] for c in caps}
    assert len(openings) >= 6  # varied templates and word order


def test_identities_unique_with_hard_negatives() -> None:
    ids = sample_identities(300, random.Random(0))
    keys = [tuple(a[k] for k in vocab.ATTRIBUTE_KEYS) for a in ids]
    assert len(set(keys)) == 300
    assert all(syn.is_drawable(a) for a in ids)

    def diff(a: dict, b: dict) -> int:
        return sum(a[k] != b[k] for k in ("skin", "hair_colour", "hair_length", "upper_type", "upper_colour",
                                          "lower_type", "lower_colour", "shoes_colour")) + \
            ((a["bag"], a["bag_colour"]) != (b["bag"], b["bag_colour"])) + (a["hat_colour"] != b["hat_colour"])

    near = sum(any(0 < diff(a, b) <= 2 for b in ids[max(0, i - 4): i + 5]) for i, a in enumerate(ids))
    assert near >= 0.6 * len(ids)


@pytest.mark.parametrize("colour", ["red", "blue", "green", "yellow", "purple", "orange"])
def test_garment_colours_survive_downscaling(colour: str) -> None:
    base = sample_identities(1, random.Random(1))[0]
    a = dict(base, upper_colour=colour, lower_colour=colour, bag=None, bag_colour=None, hat_colour=None,
             shoes_colour="black", upper_type="sweater", lower_type="trousers")
    b = dict(a, upper_colour="white", lower_colour="white")
    for k in range(3):
        small_a = np.asarray(render_person(a, (0, 1, k)).resize((32, 96), Image.BILINEAR)).astype(float)
        small_b = np.asarray(render_person(b, (0, 1, k)).resize((32, 96), Image.BILINEAR)).astype(float)
        target = np.array(vocab.PALETTE[colour], dtype=float)
        close = np.linalg.norm(small_a - target, axis=2) < 60
        assert close.sum() >= 150, (colour, close.sum())  # a large visible area at 96x32
        assert (np.linalg.norm(small_b - target, axis=2) < 60).sum() < close.sum() / 4
