"""Binding probes: the exact captions on a hand-built case, and properties over drawn identities."""

from __future__ import annotations

import random
from pathlib import Path

from binding_case import hand_built
from hypothesis import given, settings
from hypothesis import strategies as st

from uit_reid.data import PersonRecord
from uit_reid.data.probes import PROBE_KINDS, binding_probes
from uit_reid.data.synthetic import sample_attributes


def _records(attrs: list[dict | None]) -> list[PersonRecord]:
    return [PersonRecord(Path(f"{i}.png"), i, ["c"], i, a) for i, a in enumerate(attrs)]


def test_hand_built_probe_captions() -> None:
    probes = binding_probes(_records(hand_built()))
    assert list(probes) == list(PROBE_KINDS)
    b = probes["binding"]
    assert b.image_ids == [0, 2, 4]
    assert b.true == ["a person wearing red jacket and black trousers", "a person wearing grey coat and yellow trousers",
                      "a person wearing pink tank top and green shorts"]
    assert b.contrast == ["a person wearing black jacket and red trousers",
                          "a person wearing yellow coat and grey trousers",
                          "a person wearing green tank top and pink shorts"]
    s = probes["binding_shoe_upper"]
    assert s.image_ids == [0, 1, 4]
    assert s.true[1] == "a person wearing blue t-shirt and black shoes"
    assert s.contrast[1] == "a person wearing black t-shirt and blue shoes"
    h = probes["binding_bag_hat"]
    assert (h.image_ids, h.true, h.contrast) == ([0], ["a person wearing green hat and carrying blue backpack"],
                                                 ["a person wearing blue hat and carrying green backpack"])
    p = probes["presence"]
    assert p.image_ids == [0, 2, 4] and p.true == b.true
    palette = {"red", "black", "blue", "grey", "yellow", "pink", "green"}  # the split's garment colours
    for k, (i, true, contrast) in enumerate(zip(p.image_ids, p.true, p.contrast, strict=True)):
        changed = [(t, c) for t, c in zip(true.split(), contrast.split(), strict=True) if t != c]
        assert len(changed) == 1  # one colour word replaced: the upper one first, then alternating
        assert changed[0][0] == hand_built()[i]["upper_colour" if k % 2 == 0 else "lower_colour"]
        worn = {v for key, v in hand_built()[i].items() if key.endswith("_colour")}
        assert changed[0][1] in palette - worn


def test_no_attributes_no_probes() -> None:
    assert binding_probes(_records([None, {}, {"upper_colour": "red"}])) == {}


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 12))
def test_swap_contrasts_are_word_permutations_of_the_truth(seed: int, n: int) -> None:
    rng = random.Random(seed)
    records = _records([sample_attributes(rng) for _ in range(n)])
    for kind, p in binding_probes(records, seed).items():
        for i, true, contrast in zip(p.image_ids, p.true, p.contrast, strict=True):
            assert true != contrast
            if kind != "presence":  # same words, other order: only binding tells them apart
                assert sorted(true.split()) == sorted(contrast.split())
            a = records[i].attributes
            if kind in ("binding", "presence"):
                assert a is not None and a["upper_colour"] != a["lower_colour"]
