"""Text and image augmentation.

Text: UIT's attribute-word augmentation keeps only the attribute-bearing words of a caption (nouns,
adjectives, pronouns) with a small probability, so the model cannot lean on sentence structure.
nltk's perceptron tagger is used when its data is installed; otherwise a built-in pedestrian
lexicon drives nltk's data-free `nltk.tag.RegexpTagger`. `active_tagger` says which.

Images: person crops are tall and narrow, so the train transform resizes to a fixed
(height, width), flips, pads and random-crops, and applies random erasing; open_clip's
``RandomResizedCrop`` would cut people in half.
"""

from __future__ import annotations

import functools
import logging
import random
import re
from collections.abc import Callable, Sequence

import torch
from nltk.tag import RegexpTagger
from nltk.tokenize import RegexpTokenizer
from PIL import Image
from torchvision import transforms as T

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "TextAugment",
    "active_tagger",
    "build_eval_transform",
    "build_train_transform",
    "keep_attribute_words",
]

logger = logging.getLogger(__name__)

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
"""Per-channel mean of CLIP's image normalisation."""
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
"""Per-channel standard deviation of CLIP's image normalisation."""

# Penn Treebank tag prefixes of the words that carry attributes.
_KEEP_TAGS = ("NN", "JJ", "PRP")

_WORDS = RegexpTokenizer(r"[A-Za-z]+(?:[-'][A-Za-z]+)*|\d+")

# The built-in lexicon: words of pedestrian descriptions, grouped by the tag they get.
_LEXICON: dict[str, str] = {
    "PRP": "he she it they him her them his hers its their theirs himself herself themselves",
    "JJ": (
        "red blue green yellow black white grey gray pink purple orange brown beige navy dark light "
        "bright pale khaki tan golden silver maroon violet cyan teal olive cream dark-blue light-blue "
        "long short tall small big large little young old middle-aged elderly thin slim fat heavy "
        "striped checked plaid plain patterned printed floral dotted denim leather woolen knitted "
        "loose tight casual formal sleeveless short-sleeved long-sleeved hooded curly straight bald "
        "blonde blond shoulder-length medium slight skinny wide high low"
    ),
    "NN": (
        "man woman boy girl person lady gentleman child kid pedestrian adult teenager guy "
        "hair head face glasses sunglasses mask hat cap helmet hood scarf beard "
        "shirt t-shirt tee top blouse sweater jumper hoodie jacket coat vest cardigan blazer dress suit "
        "uniform sleeve sleeves collar trousers pants jeans shorts skirt leggings tights socks "
        "shoes shoe sneakers boots sandals heels slippers trainers feet "
        "bag backpack handbag purse satchel suitcase umbrella bottle phone book box bicycle bike "
        "belt watch necklace wristband tie stripes pattern logo hand hands arm arms leg legs shoulder "
        "waist back front side body outfit clothes clothing color colour"
    ),
    "DT": "a an the this that these those some any each every another both",
    "IN": (
        "in on at with without of from to into onto over under above below by near behind beside "
        "around across through along while and or but as like than about up down off out"
    ),
    "VB": (
        "is are was were be been being has have had wears wearing wore worn carries carrying carried "
        "holds holding held walks walking walked stands standing looks looking seems appears "
        "dressed goes going does do did can"
    ),
    "RB": "also very quite too not just then there here fast away together alone almost",
}

_SUFFIX_RULES: list[tuple[str, str]] = [
    (r".*ing$", "VBG"),
    (r".*ly$", "RB"),
    (r".*ed$", "VBN"),
    (r"^\d+$", "CD"),
    (r".*", "NN"),  # unknown words are most often garment or object names
]


@functools.lru_cache(maxsize=1)
def _lexicon_tagger() -> RegexpTagger:
    patterns = [
        (r"^(?:" + "|".join(re.escape(w) for w in sorted(words.split(), key=len, reverse=True)) + r")$", tag)
        for tag, words in _LEXICON.items()
    ]
    return RegexpTagger(patterns + _SUFFIX_RULES)


@functools.lru_cache(maxsize=1)
def _nltk_tagger_available() -> bool:
    import nltk

    for resource in ("taggers/averaged_perceptron_tagger_eng", "taggers/averaged_perceptron_tagger"):
        try:
            nltk.data.find(resource)
            return True
        except LookupError:
            continue
    return False


def active_tagger() -> str:
    """Name of the part-of-speech tagger in use: ``"nltk-perceptron"`` or ``"lexicon"``."""
    return "nltk-perceptron" if _nltk_tagger_available() else "lexicon"


def _tags(words: list[str], tagger: str = "auto") -> list[str]:
    if tagger not in ("auto", "lexicon", "nltk"):
        raise ValueError(f"tagger must be 'auto', 'lexicon' or 'nltk', got {tagger!r}")
    if tagger == "nltk" or (tagger == "auto" and _nltk_tagger_available()):
        import nltk

        return [tag for _, tag in nltk.pos_tag(words)]
    return [tag for _, tag in _lexicon_tagger().tag([w.lower() for w in words])]


def keep_attribute_words(caption: str, tagger: str = "auto") -> str:
    """Keep only the nouns, adjectives and pronouns of ``caption``, joined by spaces.

    ``"A man wearing a red shirt."`` becomes ``"man red shirt"``. A caption with no such word is
    returned unchanged so a training sample never loses its text. ``tagger`` picks the part-of-speech
    tagger: ``"auto"`` (`active_tagger`), ``"lexicon"`` (built in) or ``"nltk"`` (needs its data).
    """
    words = _WORDS.tokenize(caption)
    kept = [w for w, tag in zip(words, _tags(words, tagger)) if tag.startswith(_KEEP_TAGS)]
    return " ".join(kept) if kept else caption


class TextAugment:
    """With probability ``p`` replace a caption by its attribute words (UIT uses ``p=0.2``)."""

    def __init__(self, p: float = 0.2, rng: random.Random | None = None) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"TextAugment: p must be in [0, 1], got {p}")
        self.p = p
        self.rng = rng

    def __call__(self, caption: str) -> str:
        draw = self.rng.random() if self.rng is not None else random.random()
        return keep_attribute_words(caption) if draw < self.p else caption

    def __repr__(self) -> str:
        return f"TextAugment(p={self.p}, tagger={active_tagger()!r})"


def _check_size(image_size: Sequence[int]) -> tuple[int, int]:
    if len(image_size) != 2 or any(int(s) <= 0 for s in image_size):
        raise ValueError(f"image_size must be (height, width) with positive values, got {image_size!r}")
    return int(image_size[0]), int(image_size[1])


def build_train_transform(
    image_size: Sequence[int],
    *,
    flip_p: float = 0.5,
    padding: int = 10,
    erasing_p: float = 0.5,
    erasing_scale: tuple[float, float] = (0.02, 0.4),
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> Callable[[Image.Image], torch.Tensor]:
    """Resize to ``image_size`` (height, width), flip, pad + random crop, normalise, random erasing.

    Erased regions are filled with 0, the channel mean after normalisation.
    """
    size = _check_size(image_size)
    steps: list[Callable] = [
        T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(flip_p),
    ]
    if padding > 0:
        steps += [T.Pad(padding), T.RandomCrop(size)]
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    if erasing_p > 0:
        steps.append(T.RandomErasing(p=erasing_p, scale=erasing_scale, value=0))
    return T.Compose([_to_rgb, *steps])


def build_eval_transform(
    image_size: Sequence[int],
    *,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> Callable[[Image.Image], torch.Tensor]:
    """Resize to ``image_size`` (height, width) and normalise with CLIP's statistics."""
    size = _check_size(image_size)
    return T.Compose(
        [_to_rgb, T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.ToTensor(), T.Normalize(mean, std)]
    )


def _to_rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")
