"""TIR text use: against an independent computation, chance for a decoder that cannot see the words,
and far above chance for one that learnt to read them (the decoder warm-up)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from uit_reid import TIRHead, UITModel
from uit_reid.augment import build_eval_transform
from uit_reid.data import binding_probes, load_dataset, make_synthetic
from uit_reid.evaluation import TEXT_USE_KEYS, evaluate_model, evaluate_text_use
from uit_reid.images import load_image
from uit_reid.tir import TIR_TARGETS, patchify, random_masking, tir_target, to_grayscale


@pytest.fixture(scope="module")
def people(tmp_path_factory):
    """A small synthetic split whose records carry attributes (the demo's world)."""
    root = tmp_path_factory.mktemp("people")
    make_synthetic(root, num_ids=20, images_per_id=2, seed=3, num_val_ids=0, num_test_ids=16,
                   image_size=(96, 32), progress=False)
    return load_dataset(root, progress=False)


def _model(encoder_factory, target: str = "pixels", seed: int = 0) -> UITModel:
    enc = encoder_factory(seed)
    torch.manual_seed(seed)
    head = TIRHead(enc.embed_dim, enc.grid_size, enc.patch_size, width=64, depth=1, heads=4)
    return UITModel(enc, num_classes=0, tir_head=head, tir_target=target).eval()


def _by_hand(model: UITModel, split, max_images: int, seed: int) -> dict[str, float]:
    """Text use one image at a time: masks drawn as `random_masking` draws them, the decoder called directly."""
    probes = binding_probes(split.records, seed)["binding"]
    n = min(len(probes), max_images)
    transform = build_eval_transform(model.image_size, interpolation=model.interpolation,
                                     mean=model.image_mean, std=model.image_std)
    gen = torch.Generator().manual_seed(seed)
    enc, p = model.encoder, model.encoder.patch_size
    errors = {"true": [], "swapped": [], "empty": []}
    with torch.no_grad():
        images = torch.stack([transform(load_image(split.records[i].image_path)) for i in probes.image_ids[:n]])
        # the evaluation draws one batch of masks; so does this (same generator, same call)
        ids_keep, ids_restore, mask = random_masking(n, enc.grid_size[0] * enc.grid_size[1], model.mask_ratio,
                                                     generator=gen)
        for b in range(n):
            x = enc._patch_embed(to_grayscale(images[b : b + 1]))
            visible = torch.cat([x[:, :1], x[:, 1:][:, ids_keep[b]]], dim=1)
            tokens = enc._encode_embedded(visible)
            target = tir_target(images[b : b + 1], p, model.tir_target)[0].numpy()
            for name, caption in (("true", probes.true[b]), ("swapped", probes.contrast[b]), ("empty", "")):
                text_ids = enc.tokenize([caption])
                _, text_tokens = enc.encode_text(text_ids, return_tokens=True)
                pred = model.tir_head(tokens, ids_restore[b : b + 1], text_tokens, enc.text_padding_mask(text_ids))
                sq = ((pred[0].numpy() - target) ** 2).mean(axis=1)
                errors[name].append(float(sq[mask[b].numpy()].mean()))
    e = {k: np.array(v) for k, v in errors.items()}

    def wins(a, b):
        return 100 * (np.sum(a < b) + 0.5 * np.sum(a == b)) / len(a)

    return {"text_use": wins(e["true"], e["swapped"]), "text_use_empty": wins(e["true"], e["empty"]),
            "tir_error_true": e["true"].mean(), "tir_error_swapped": e["swapped"].mean(), "n": n}


@pytest.mark.parametrize("target", TIR_TARGETS)
def test_text_use_matches_an_independent_computation(tiny_encoder_factory, people, target) -> None:
    model = _model(tiny_encoder_factory, target)
    got = evaluate_text_use(model, people.test, batch_size=7, max_images=20, seed=4)
    want = _by_hand(model, people.test, max_images=20, seed=4)
    assert set(got) == set(TEXT_USE_KEYS)
    assert got["text_use_n"] == want["n"] == 20
    assert got["text_use"] == pytest.approx(want["text_use"])
    assert got["text_use_empty"] == pytest.approx(want["text_use_empty"])
    assert got["tir_error_true"] == pytest.approx(want["tir_error_true"], rel=1e-4)
    assert got["tir_error_swapped"] == pytest.approx(want["tir_error_swapped"], rel=1e-4)


def test_a_decoder_that_cannot_see_the_words_scores_chance(tiny_encoder_factory, people) -> None:
    model = _model(tiny_encoder_factory)
    with torch.no_grad():
        model.tir_head.text_norm.weight.zero_()  # every caption token becomes the same vector
    got = evaluate_text_use(model, people.test)
    assert got["text_use"] == got["text_use_empty"] == got["text_use_other"] == 50.0
    assert got["tir_error_true"] == pytest.approx(got["tir_error_swapped"], abs=1e-6)


def test_text_use_is_in_the_model_metrics_only_with_a_tir_head(tiny_encoder_factory, people) -> None:
    with_head = evaluate_model(_model(tiny_encoder_factory), people.test)
    assert set(TEXT_USE_KEYS) <= set(with_head)
    without = evaluate_model(UITModel(tiny_encoder_factory(0), num_classes=0, tir_head=False).eval(), people.test)
    assert not set(TEXT_USE_KEYS) & set(without) and "binding" in without


def test_tir_target_patch_norm_standardises_each_patch() -> None:
    images = torch.randn(2, 3, 16, 8) * 3 + 1
    t = tir_target(images, 8, "patch_norm")
    assert torch.allclose(t.mean(dim=-1), torch.zeros(2, 2), atol=1e-5)
    assert torch.allclose(t.std(dim=-1, unbiased=False), torch.ones(2, 2), atol=1e-4)
    assert torch.equal(tir_target(images, 8, "pixels"), patchify(images, 8))
    with pytest.raises(ValueError, match="unknown TIR target 'luma'"):
        tir_target(images, 8, "luma")
