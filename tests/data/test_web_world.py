"""The pre-training world: short captions that never bind both garments, disjoint from the demo's world."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uit_reid.data import _world as vocab
from uit_reid.data import load_dataset, make_synthetic
from uit_reid.data import synthetic as syn
from uit_reid.data.synthetic import sample_identities
from uit_reid.data.web_world import PARK, make_web_caption

_COLOUR = {w: c for c, ws in vocab.COLOUR_WORDS.items() for w in ws}
_GARMENTS = sorted(
    [(w, "upper", t) for t, ws in vocab.UPPER_WORDS.items() for w in ws]
    + [(w, "lower", t) for t, ws in vocab.LOWER_WORDS.items() for w in ws],
    key=lambda x: -len(x[0]),
)
_ITEMS = sorted(
    [*(w for w, _, _ in _GARMENTS), *vocab.SHOE_WORDS, *(w for ws in vocab.BAG_WORDS.values() for w in ws),
     *vocab.HAT_WORDS, "hair", "skin"],
    key=len, reverse=True,
)


def _coloured_garments(caption: str, attrs: dict) -> set[str]:
    """Garment slots named with a colour in ``caption``; each such colour must be the person's."""
    slots = set()
    pattern = r"\b(" + "|".join(_COLOUR) + r") (" + "|".join(re.escape(w) for w, _, _ in _GARMENTS) + r")\b"
    for m in re.finditer(pattern, caption):
        _, slot, kind = next(g for g in _GARMENTS if g[0] == m.group(2))
        assert attrs[f"{slot}_type"] == kind, caption
        assert attrs[f"{slot}_colour"] == _COLOUR[m.group(1)], caption
        slots.add(slot)
    return slots


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 10_000))
def test_captions_name_one_to_three_true_attributes_and_never_both_garment_colours(id_seed: int, cap_seed: int) -> None:
    attrs = sample_identities(1, random.Random(id_seed))[0]
    caption = make_web_caption(attrs, random.Random(cap_seed))
    assert len(_coloured_garments(caption, attrs)) == 1  # exactly one garment carries its colour
    items = re.findall(r"\b(" + "|".join(re.escape(w) for w in _ITEMS) + r")\b", caption)
    assert 1 <= len(items) <= 3, caption
    if "hat" in caption or "cap" in caption.split():
        assert attrs["hat_colour"], caption
    if any(w in caption for ws in vocab.BAG_WORDS.values() for w in ws):
        assert attrs["bag"], caption


def test_captions_are_short_and_varied() -> None:
    rng = random.Random(0)
    people = sample_identities(300, random.Random(1), (1, 2))
    caps = [make_web_caption(p, rng) for p in people]
    assert max(len(c.split()) for c in caps) <= 20
    assert len(set(caps)) > 250


def test_web_world_is_disjoint_from_the_demo_world(tmp_path: Path) -> None:
    kw = {"num_ids": 12, "images_per_id": 2, "seed": 0, "num_val_ids": 2, "num_test_ids": 2, "progress": False}
    demo = make_synthetic(tmp_path / "demo", **kw)
    web = make_synthetic(tmp_path / "web", **kw, world="web")
    demo_recs = [json.loads(line) for line in demo.read_text().splitlines()]
    web_recs = [json.loads(line) for line in web.read_text().splitlines()]
    keys = lambda recs: {tuple(sorted(r["attributes"].items(), key=str)) for r in recs}  # noqa: E731
    assert not keys(demo_recs) & keys(web_recs)  # other identities from the same seed
    assert not {c for r in demo_recs for c in r["captions"]} & {c for r in web_recs for c in r["captions"]}
    same = [(tmp_path / "demo" / r["image"]).read_bytes() == (tmp_path / "web" / r["image"]).read_bytes()
            for r in demo_recs]
    assert not any(same)
    ds = load_dataset(tmp_path / "web")
    assert (ds.train.num_ids, ds.val.num_ids, ds.test.num_ids) == (8, 2, 2)
    again = make_synthetic(tmp_path / "web2", **kw, world="web", workers=2)
    assert again.read_bytes() == web.read_bytes()  # deterministic, as the demo's world


def test_park_staging_differs_from_the_street() -> None:
    person = sample_identities(1, random.Random(2))[0]
    street = syn.render_person(person, (0, 0, 0))
    park = syn.render_person(person, (0, 0, 0), style=PARK)
    assert street.size == park.size and street.tobytes() != park.tobytes()


def test_unknown_world_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^unknown synthetic world 'moon'; choose one of \['pedestrians', 'web'\]$"):
        make_synthetic(tmp_path, num_ids=4, world="moon", progress=False)
