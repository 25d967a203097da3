"""Attribute binding on a model: against an independent computation, and chance for an order-blind model."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from binding_case import hand_built

from uit_reid import UITModel
from uit_reid.augment import build_eval_transform
from uit_reid.data import load_dataset
from uit_reid.data.synthetic import render_person
from uit_reid.evaluation import BINDING_KEYS, binding_table, evaluate_binding, evaluate_model
from uit_reid.images import load_image


@pytest.fixture(scope="module")
def hand_split(tmp_path_factory):
    """The five hand-built people of `test_probes` as a JSONL test split with drawn images."""
    root = tmp_path_factory.mktemp("binding")
    lines = []
    for i, attrs in enumerate(hand_built()):
        full = {"skin": "light", "hair_colour": "black", "hair_length": "short", **(attrs or hand_built()[0])}
        render_person(full, (7, i, 0), (96, 32)).save(root / f"{i}.png")
        rec = {"image": f"{i}.png", "pid": i, "captions": ["a person"], "split": "test"}
        if attrs is not None:
            rec["attributes"] = attrs
        lines.append(json.dumps(rec))
    (root / "annotations.jsonl").write_text("\n".join(lines) + "\n")
    return load_dataset(root, progress=False).test


def _image_feature(model: UITModel, path: Path) -> torch.Tensor:
    transform = build_eval_transform(model.image_size, interpolation=model.interpolation)
    with torch.no_grad():
        return model.encode_image(transform(load_image(path))[None], normalize=True)[0]


def _text_feature(model: UITModel, caption: str) -> torch.Tensor:
    with torch.no_grad():
        return model.encode_text(model.encoder.tokenize([caption]), normalize=True)[0]


def _share(model: UITModel, split, pairs: dict[int, tuple[str, str]]) -> float:
    """Percent of images whose first caption scores above the second, one image and caption at a time."""
    wins = 0.0
    for i, (true, contrast) in pairs.items():
        v = _image_feature(model, split.records[i].image_path)
        t, c = float(v @ _text_feature(model, true)), float(v @ _text_feature(model, contrast))
        wins += 1.0 if t > c else 0.5 if t == c else 0.0
    return 100 * wins / len(pairs)


def test_binding_matches_an_independent_computation(tiny_encoder, hand_split) -> None:
    model = UITModel(tiny_encoder, num_classes=0, tir_head=False).eval()
    got = evaluate_binding(model, hand_split, batch_size=2)
    garments = {
        0: ("a person wearing red jacket and black trousers", "a person wearing black jacket and red trousers"),
        2: ("a person wearing grey coat and yellow trousers", "a person wearing yellow coat and grey trousers"),
        4: ("a person wearing pink tank top and green shorts", "a person wearing green tank top and pink shorts"),
    }
    shoes = {
        0: ("a person wearing red jacket and white shoes", "a person wearing white jacket and red shoes"),
        1: ("a person wearing blue t-shirt and black shoes", "a person wearing black t-shirt and blue shoes"),
        4: ("a person wearing pink tank top and red shoes", "a person wearing red tank top and pink shoes"),
    }
    bag_hat = {0: ("a person wearing green hat and carrying blue backpack",
                   "a person wearing blue hat and carrying green backpack")}
    expected = {"binding": _share(model, hand_split, garments), "binding_shoe_upper": _share(model, hand_split, shoes),
                "binding_bag_hat": _share(model, hand_split, bag_hat)}
    assert {k: got[k] for k in expected} == pytest.approx(expected, abs=1e-9)
    assert (got["binding_n"], got["presence_n"], got["binding_shoe_upper_n"], got["binding_bag_hat_n"]) == (3, 3, 3, 1)
    assert set(got) == set(BINDING_KEYS)
    # the images' features from elsewhere (as evaluate_model passes them) give the same figures
    feats = torch.stack([_image_feature(model, r.image_path) for r in hand_split.records])
    assert evaluate_binding(model, hand_split, image_features=feats) == pytest.approx(got, abs=1e-6)
    assert binding_table(got).splitlines()[2] == f"| binding | upper vs lower colours swapped | {got['binding']:.2f} | 3 |"


class BagOfWords(UITModel):
    """Text features from token counts alone (integer weights, so equal counts give bit-equal features)."""

    def __init__(self, encoder) -> None:
        super().__init__(encoder, num_classes=0, tir_head=False)
        gen = torch.Generator().manual_seed(0)
        vocab = encoder.clip.token_embedding.num_embeddings
        self.register_buffer("words", torch.randint(-3, 4, (vocab, encoder.embed_dim), generator=gen).float())

    def encode_text(self, ids: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        counts = torch.zeros(ids.shape[0], self.words.shape[0]).scatter_add_(1, ids, torch.ones(ids.shape))
        counts[:, 0] = 0  # padding
        return F.normalize(counts @ self.words, dim=-1)


def test_a_model_blind_to_word_order_scores_chance(tiny_encoder, hand_split) -> None:
    got = evaluate_binding(BagOfWords(tiny_encoder).eval(), hand_split)
    assert (got["binding"], got["binding_shoe_upper"], got["binding_bag_hat"]) == (50.0, 50.0, 50.0)


def test_evaluate_model_adds_binding_only_where_records_carry_attributes(tiny_encoder, hand_split) -> None:
    model = UITModel(tiny_encoder, num_classes=0, tir_head=False).eval()
    metrics = evaluate_model(model, hand_split)
    assert set(metrics) == {"R1", "R5", "R10", "mAP", "mINP", *BINDING_KEYS}
    assert {k: metrics[k] for k in BINDING_KEYS} == pytest.approx(evaluate_binding(model, hand_split), abs=1e-6)
    bare = dataclasses.replace(hand_split, records=[dataclasses.replace(r, attributes=None) for r in hand_split.records])
    assert evaluate_binding(model, bare) == {}
    assert set(evaluate_model(model, bare)) == {"R1", "R5", "R10", "mAP", "mINP"}
