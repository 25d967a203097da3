"""Attribute-word text augmentation and the person-shaped image transforms."""

from __future__ import annotations

import random

import nltk
import pytest
import torch
from PIL import Image

from uit_reid import augment


def _nltk_data_installed() -> bool:
    for resource in ("taggers/averaged_perceptron_tagger_eng", "taggers/averaged_perceptron_tagger"):
        try:
            nltk.data.find(resource)
            return True
        except LookupError:
            pass
    return False


def test_active_tagger_reports_what_is_installed() -> None:
    assert augment.active_tagger() == ("nltk-perceptron" if _nltk_data_installed() else "lexicon")


@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        ("A man wearing a red shirt.", "man red shirt"),
        ("She is carrying a blue backpack and walking fast.", "She blue backpack"),
        ("The woman has long black hair and white sneakers.", "woman long black hair white sneakers"),
        ("He wore dark-blue jeans with a striped t-shirt.", "He dark-blue jeans striped t-shirt"),
    ],
)
def test_keep_attribute_words(caption: str, expected: str) -> None:
    if augment.active_tagger() != "lexicon":
        pytest.skip("exact outputs are the built-in lexicon's; nltk's tagger may differ in details")
    assert augment.keep_attribute_words(caption) == expected


def test_keep_attribute_words_never_empties_a_caption() -> None:
    assert augment.keep_attribute_words("is walking and then") == "is walking and then"


def test_text_augment_probability_and_determinism() -> None:
    caption = "A girl in a pink dress is walking along the road."
    assert augment.TextAugment(p=0.0)(caption) == caption
    assert augment.TextAugment(p=1.0)(caption) == augment.keep_attribute_words(caption)
    a = augment.TextAugment(p=0.5, rng=random.Random(3))
    b = augment.TextAugment(p=0.5, rng=random.Random(3))
    outs_a = [a(caption) for _ in range(50)]
    assert outs_a == [b(caption) for _ in range(50)]
    changed = sum(out != caption for out in outs_a)
    assert 10 < changed < 40  # p=0.5 over 50 draws
    with pytest.raises(ValueError, match="p must be"):
        augment.TextAugment(p=1.5)


def test_transforms_give_person_shaped_normalised_tensors() -> None:
    image = Image.new("L", (50, 170), color=200)  # grayscale input is converted to RGB
    train = augment.build_train_transform((96, 32))
    evaluate = augment.build_eval_transform((96, 32))
    out = evaluate(image)
    assert out.shape == (3, 96, 32)
    want = (200 / 255 - torch.tensor(augment.CLIP_MEAN)) / torch.tensor(augment.CLIP_STD)
    assert torch.allclose(out[:, 48, 16], want, atol=1e-3)
    torch.manual_seed(0)
    assert train(image).shape == (3, 96, 32)
    with pytest.raises(ValueError, match="image_size"):
        augment.build_eval_transform((96,))
