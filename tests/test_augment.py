"""Attribute-word text augmentation and the person-shaped image transforms."""

from __future__ import annotations

import random

import nltk
import numpy as np
import pytest
import torch
from PIL import Image

from uit_reid import augment
from uit_reid.images import CLIP_MEAN, CLIP_STD


def _nltk_tagger_works() -> bool:
    try:
        nltk.pos_tag(["man"])
        return True
    except LookupError:
        return False


def test_active_tagger_reports_what_is_installed() -> None:
    assert augment.active_tagger() == ("nltk-perceptron" if _nltk_tagger_works() else "lexicon")


def test_tagger_data_under_an_old_name_falls_back_to_the_lexicon(tmp_path) -> None:
    # nltk >= 3.9 loads averaged_perceptron_tagger_eng; data under the pre-3.9 name cannot tag
    import subprocess
    import sys

    old = tmp_path / "taggers" / "averaged_perceptron_tagger"
    old.mkdir(parents=True)
    (old / "averaged_perceptron_tagger.pickle").write_bytes(b"not a tagger")
    code = "from uit_reid import augment; print(augment.active_tagger(), augment.keep_attribute_words('A man in red.'))"
    env = {**__import__("os").environ, "NLTK_DATA": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=120)
    want = "lexicon man red" if not _nltk_tagger_works() else out.stdout.strip()
    assert out.stdout.strip() == want


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
    if not _nltk_tagger_works():
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
    want = (200 / 255 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert torch.allclose(out[:, 48, 16], want, atol=1e-3)
    torch.manual_seed(0)
    assert train(image).shape == (3, 96, 32)
    with pytest.raises(ValueError, match="image_size"):
        augment.build_eval_transform((96,))


def test_transforms_composite_transparency_like_the_loader() -> None:
    # one RGB conversion (uit_reid.images.to_rgb): a fully transparent pixel is the background
    # (CLIP's mean colour), about 0 after normalising, whatever colour the file stored under it
    image = Image.new("RGBA", (32, 96), (255, 0, 0, 0))
    for transform in (augment.build_eval_transform((96, 32)), augment.build_train_transform((96, 32))):
        torch.manual_seed(0)
        out = transform(image)
        assert out[:, 48, 16].abs().max() < 0.02


# --------------------------------------------------------------------------- token corruption
# SEN datasets/bases.py _build_random_masked_tokens_and_labels: noun/adjective tokens selected with
# p 0.3, other word tokens 0.05; selected -> <|mask|> (id 49405) 80%, random id in 1..49404 10%,
# unchanged 10%; nothing selected -> token 1 (the first word) masked.
SEN_MASK_ID = 49405


@pytest.fixture(scope="module")
def clip_tokenizer():
    import open_clip

    return open_clip.get_tokenizer("ViT-B-16")


def test_token_corruption_rates_over_10k_captions(clip_tokenizer) -> None:
    import random as pyrandom

    from uit_reid.augment import TokenCorruption, corrupt_tokens
    from uit_reid.data.synthetic import make_caption, sample_identities

    rng = pyrandom.Random(0)
    people = sample_identities(200, rng)
    captions = [make_caption(people[i % 200], rng) for i in range(10_000)]
    ids = clip_tokenizer(captions)
    corruption = TokenCorruption.for_tokenizer(clip_tokenizer)
    assert corruption.mask_id == SEN_MASK_ID
    attribute = corruption.attribute_mask(ids)
    out, selected = corrupt_tokens(ids, attribute, SEN_MASK_ID, generator=torch.Generator().manual_seed(0))
    word = (ids > 0) & (ids < SEN_MASK_ID)
    later = word.clone()
    later[:, :2] = False  # leave the first word out: the empty-row rule may select it
    assert later[attribute].sum() > 50_000 and later[~attribute].sum() > 50_000
    assert selected[later & attribute].float().mean().item() == pytest.approx(0.30, abs=0.01)
    assert selected[later & ~attribute].float().mean().item() == pytest.approx(0.05, abs=0.01)
    chosen = selected & later
    masked = out[chosen] == SEN_MASK_ID
    kept = out[chosen] == ids[chosen]
    assert masked.float().mean().item() == pytest.approx(0.80, abs=0.01)
    assert kept.float().mean().item() == pytest.approx(0.10, abs=0.01)
    assert (~masked & ~kept).float().mean().item() == pytest.approx(0.10, abs=0.01)
    assert torch.equal(out[~selected], ids[~selected])  # nothing else changes: SOT, EOT, padding
    replaced = out[chosen][~masked & ~kept]
    assert replaced.min() >= 1 and replaced.max() < SEN_MASK_ID
    assert selected.any(dim=1).all()  # every caption is corrupted somewhere


def test_token_corruption_masks_the_first_word_when_nothing_is_selected(clip_tokenizer) -> None:
    from uit_reid.augment import corrupt_tokens

    ids = clip_tokenizer(["a man in a red jacket", "shoes"])
    out, selected = corrupt_tokens(ids, torch.zeros_like(ids, dtype=torch.bool), SEN_MASK_ID, attribute_p=0.0, other_p=0.0)
    assert out[:, 1].tolist() == [SEN_MASK_ID, SEN_MASK_ID]
    assert torch.equal(out[:, 2:], ids[:, 2:]) and selected.sum() == 2


def test_token_corruption_tags_nouns_and_adjectives(clip_tokenizer) -> None:
    from uit_reid.augment import TokenCorruption

    corruption = TokenCorruption.for_tokenizer(clip_tokenizer)
    ids = clip_tokenizer(["the woman wears a red jacket"])
    words = ["the", "woman", "wears", "a", "red", "jacket"]
    assert corruption.attribute_mask(ids)[0, 1:7].tolist() == [w in ("woman", "red", "jacket") for w in words]
    with pytest.raises(TypeError, match="needs a CLIP BPE tokenizer"):
        TokenCorruption.for_tokenizer(str.split)


def test_paper_transforms_match_the_authors_pipeline() -> None:
    from torchvision import transforms as T

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (200, 90, 3), dtype=np.uint8))
    ours = augment.build_train_transform((64, 32), flip_p=0.0, padding=0, erasing_p=0.0, interpolation="bilinear")
    # SEN datasets/build.py: T.Resize((h, w)) with torchvision's default (bilinear), ToTensor, Normalize
    sen = T.Compose([T.Resize((64, 32)), T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)])
    assert torch.equal(ours(image), sen(image))
    erase = augment.build_train_transform((64, 32), flip_p=0.0, padding=0, erasing_p=1.0, erasing_fill="clip_mean")
    torch.manual_seed(0)
    out = erase(Image.new("RGB", (32, 64), (0, 0, 0)))
    black = (0 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    erased = (out != black.view(3, 1, 1)).all(dim=0)
    assert erased.any()
    # SEN: RandomErasing(value=mean) after Normalize -> the normalised tensor holds CLIP's mean values
    values = out[:, erased]
    assert torch.allclose(values, torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1).expand_as(values))
    pixels = values[:, 0] * torch.tensor(CLIP_STD) + torch.tensor(CLIP_MEAN)
    assert pixels.tolist() == pytest.approx([0.61, 0.58, 0.52], abs=0.01)  # a light grey
    with pytest.raises(ValueError, match=r"erasing_fill must be one of \['clip_mean', 'zero'\], got 'grey'"):
        augment.build_train_transform((64, 32), erasing_fill="grey")
    with pytest.raises(ValueError, match=r"interpolation must be one of \['bicubic', 'bilinear'\], got 'area'"):
        augment.build_eval_transform((64, 32), interpolation="area")
