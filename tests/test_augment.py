"""Attribute-word text augmentation and the person-shaped image transforms."""

from __future__ import annotations

import random

import nltk
import pytest
import torch
from PIL import Image

from uit_reid import augment


def _nltk_can_tag() -> bool:
    """Whether nltk's own tagger works here (its data installed), found by tagging, not by looking up files."""
    try:
        nltk.pos_tag(["a", "man"])
        return True
    except LookupError:
        return False


def test_active_tagger_reports_the_tagger_that_works() -> None:
    assert augment.active_tagger() == ("nltk-perceptron" if _nltk_can_tag() else "lexicon")


CAPTIONS = [
    ("A man wearing a red shirt.", "man red shirt"),
    ("She is carrying a blue backpack and walking fast.", "She blue backpack"),
    ("The woman has long black hair and white sneakers.", "woman long black hair white sneakers"),
    ("He wore dark-blue jeans with a striped t-shirt.", "He dark-blue jeans striped t-shirt"),
]


@pytest.mark.parametrize(("caption", "expected"), CAPTIONS)
def test_keep_attribute_words_with_the_builtin_lexicon(caption: str, expected: str) -> None:
    # runs whether or not nltk's data is installed: the lexicon is chosen explicitly
    assert augment.keep_attribute_words(caption, tagger="lexicon") == expected


@pytest.mark.parametrize(("caption", "expected"), CAPTIONS[:1])
def test_keep_attribute_words_with_nltk(caption: str, expected: str) -> None:
    if not _nltk_can_tag():
        with pytest.raises(LookupError):
            augment.keep_attribute_words(caption, tagger="nltk")
        return
    assert augment.keep_attribute_words(caption, tagger="nltk") == expected


def test_keep_attribute_words_auto_uses_the_active_tagger() -> None:
    name = {"nltk-perceptron": "nltk", "lexicon": "lexicon"}[augment.active_tagger()]
    for caption, _ in CAPTIONS:
        assert augment.keep_attribute_words(caption) == augment.keep_attribute_words(caption, tagger=name)
    with pytest.raises(ValueError, match="tagger must be"):
        augment.keep_attribute_words("a man", tagger="spacy")


def test_keep_attribute_words_never_empties_a_caption() -> None:
    assert augment.keep_attribute_words("is walking and then") == "is walking and then"


def test_text_augment_probability_and_determinism() -> None:
    caption = "A girl in a pink dress is walking along the road."
    assert augment.TextAugment(p=0.0)(caption) == caption
    assert augment.TextAugment(p=1.0)(caption) == augment.keep_attribute_words(caption)
    if augment.active_tagger() == "lexicon":
        assert augment.TextAugment(p=1.0)(caption) == "girl pink dress road"
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
