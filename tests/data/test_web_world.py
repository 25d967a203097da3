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
from uit_reid.data.web_world import PARK, make_bag_caption, make_web_caption

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
    with pytest.raises(ValueError, match=r"^unknown synthetic world 'moon'; choose one of \['pedestrians', 'web', 'web-bag'\]$"):
        make_synthetic(tmp_path, num_ids=4, world="moon", progress=False)


# ---------------------------------------------------------------------------------------------------
# The bag-of-words captioning ("web-bag"): colours and garments named, never which colour goes where
def _split_bag(caption: str) -> tuple[list[str], list[str]]:
    """The colour words and the garment/shoe words of a bag caption, in the order they appear."""
    colours = re.findall(r"\b(" + "|".join(sorted(_COLOUR, key=len, reverse=True)) + r")\b", caption)
    items = re.findall(r"\b(" + "|".join(re.escape(w) for w in _ITEMS) + r")\b", caption)
    return colours, items


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 10_000))
def test_bag_captions_name_both_garments_and_their_colours_and_never_pair_them(id_seed: int, cap_seed: int) -> None:
    attrs = sample_identities(1, random.Random(id_seed))[0]
    caption = make_bag_caption(attrs, random.Random(cap_seed))
    colours, items = _split_bag(caption)
    assert {attrs["upper_colour"], attrs["lower_colour"]} <= {_COLOUR[c] for c in colours}, caption
    kinds = {next(g for g in _GARMENTS if g[0] == w)[1] for w in items if any(g[0] == w for g in _GARMENTS)}
    assert kinds == {"upper", "lower"}, caption
    # no colour word stands right before a garment word: nothing pairs them
    garment = "|".join(re.escape(w) for w, _, _ in _GARMENTS)
    assert not re.search(r"\b(" + "|".join(_COLOUR) + r") (" + garment + r")\b", caption), caption


def test_bag_caption_order_says_nothing_about_which_colour_is_where() -> None:
    """Over many people, the first-named colour is the first-named garment's half of the time."""
    rng = random.Random(0)
    people = [p for p in sample_identities(4000, random.Random(3), (1, 2)) if p["upper_colour"] != p["lower_colour"]]
    agree = 0
    for p in people:
        colours, items = _split_bag(make_bag_caption(p, rng))
        first_garment = next(next(g for g in _GARMENTS if g[0] == w)[1] for w in items if any(g[0] == w for g in _GARMENTS))
        first_colour = next(_COLOUR[c] for c in colours if _COLOUR[c] in (p["upper_colour"], p["lower_colour"]))
        agree += first_colour == p[f"{first_garment}_colour"]
    assert abs(agree / len(people) - 0.5) < 0.03, agree / len(people)


def test_bag_world_draws_the_web_worlds_people_and_images(tmp_path: Path) -> None:
    kw = {"num_ids": 10, "images_per_id": 2, "seed": 0, "num_val_ids": 2, "num_test_ids": 0, "progress": False}
    web = [json.loads(line) for line in make_synthetic(tmp_path / "web", **kw, world="web").read_text().splitlines()]
    bag = [json.loads(line) for line in make_synthetic(tmp_path / "bag", **kw, world="web-bag").read_text().splitlines()]
    assert [r["attributes"] for r in web] == [r["attributes"] for r in bag]
    assert all((tmp_path / "web" / a["image"]).read_bytes() == (tmp_path / "bag" / b["image"]).read_bytes()
               for a, b in zip(web, bag, strict=True))
    assert all(a["captions"] != b["captions"] for a, b in zip(web, bag, strict=True))
