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

from uit_reid.images import CLIP_MEAN, CLIP_STD, INTERPOLATIONS, to_rgb

__all__ = [
    "ERASING_FILLS",
    "TextAugment",
    "TokenCorruption",
    "active_tagger",
    "build_eval_transform",
    "build_train_transform",
    "corrupt_tokens",
    "keep_attribute_words",
]

logger = logging.getLogger(__name__)

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
    """Whether nltk's perceptron tagger works here, found by tagging one word.

    nltk >= 3.9 loads ``averaged_perceptron_tagger_eng`` and older ones
    ``averaged_perceptron_tagger``; checking for a resource by name would accept data the installed
    nltk cannot use and fail on the first caption instead.
    """
    import nltk

    try:
        nltk.pos_tag(["man"])
    except LookupError:
        return False
    except Exception as exc:  # broken or foreign data files
        logger.warning("nltk's tagger is installed but failed (%s); using the built-in lexicon", exc)
        return False
    return True


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


ERASING_FILLS = {"zero": 0.0, "clip_mean": CLIP_MEAN}
"""Random-erasing fills by name, written into the *normalised* tensor: ``"zero"`` is the mean pixel
(a mid grey); ``"clip_mean"`` writes CLIP's mean values after normalisation, as the authors' code
does, which is a light grey of about (0.61, 0.58, 0.52) in pixels."""


def _interpolation(name: str) -> T.InterpolationMode:
    if name not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)}, got {name!r}")
    return T.InterpolationMode(name)  # torchvision names its modes as PIL does


def build_train_transform(
    image_size: Sequence[int],
    *,
    flip_p: float = 0.5,
    padding: int = 10,
    erasing_p: float = 0.5,
    erasing_scale: tuple[float, float] = (0.02, 0.4),
    erasing_fill: str = "zero",
    interpolation: str = "bicubic",
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> Callable[[Image.Image], torch.Tensor]:
    """Resize to ``image_size`` (height, width), flip, pad + random crop, normalise, random erasing.

    ``erasing_fill`` names the value erased regions get (`ERASING_FILLS`); ``interpolation`` the
    resize filter (`INTERPOLATIONS`). The paper configs use ``"clip_mean"`` and ``"bilinear"``
    as the authors' code does.
    """
    size = _check_size(image_size)
    if erasing_fill not in ERASING_FILLS:
        raise ValueError(f"erasing_fill must be one of {sorted(ERASING_FILLS)}, got {erasing_fill!r}")
    steps: list[Callable] = [
        T.Resize(size, interpolation=_interpolation(interpolation)),
        T.RandomHorizontalFlip(flip_p),
    ]
    if padding > 0:
        steps += [T.Pad(padding), T.RandomCrop(size)]
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    if erasing_p > 0:
        fill = ERASING_FILLS[erasing_fill]
        steps.append(T.RandomErasing(p=erasing_p, scale=erasing_scale, value=list(fill) if isinstance(fill, tuple) else fill))
    return T.Compose([to_rgb, *steps])


def build_eval_transform(
    image_size: Sequence[int],
    *,
    interpolation: str = "bicubic",
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> Callable[[Image.Image], torch.Tensor]:
    """Resize to ``image_size`` (height, width) and normalise with CLIP's statistics."""
    size = _check_size(image_size)
    return T.Compose([to_rgb, T.Resize(size, interpolation=_interpolation(interpolation)), T.ToTensor(), T.Normalize(mean, std)])


# --------------------------------------------------------------------------- token corruption
_ATTRIBUTE_TAGS = ("NN", "JJ")  # SEN: NN, NNS, NNP, NNPS, JJ, JJR, JJS


def _is_attribute_token(token: str) -> bool:
    word = token.removesuffix("</w>")
    return bool(word) and word.isalpha() and _tags([word])[0].startswith(_ATTRIBUTE_TAGS)


def corrupt_tokens(
    ids: torch.Tensor,
    attribute: torch.Tensor,
    mask_id: int,
    *,
    attribute_p: float = 0.3,
    other_p: float = 0.05,
    mask_frac: float = 0.8,
    random_frac: float = 0.1,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT-style corruption of token ids ``(B, L)``: returns ``(corrupted ids, selected)``.

    Each word token (``0 < id < mask_id``) is selected with probability ``attribute_p`` where
    ``attribute`` (bool, same shape) is True, else ``other_p``; a selected token becomes
    ``mask_id`` with probability ``mask_frac``, a uniform random word token ``1..mask_id-1`` with
    probability ``random_frac``, and stays as it is otherwise. A row with nothing selected gets its
    first word token masked.
    """
    word = (ids > 0) & (ids < mask_id)
    probs = torch.where(attribute, attribute_p, other_p).to(torch.float32)
    draw = torch.rand(ids.shape, generator=generator, device=ids.device)
    selected = word & (draw < probs)
    rel = draw / probs.clamp_min(1e-12)
    random_ids = torch.randint(1, mask_id, ids.shape, generator=generator, device=ids.device)
    out = torch.where(selected & (rel < mask_frac), torch.full_like(ids, mask_id), ids)
    out = torch.where(selected & (rel >= mask_frac) & (rel < mask_frac + random_frac), random_ids, out)
    empty = ~selected.any(dim=1) & word.any(dim=1)
    if empty.any():
        first = word.float().argmax(dim=1)
        rows = empty.nonzero().squeeze(1)
        out[rows, first[rows]] = mask_id
        selected[rows, first[rows]] = True
    return out, selected


class TokenCorruption:
    """The caption corruption the authors' code applies to every training caption (named augmentation
    ``token_corruption``).

    SEN and IRRA build masked-language-model inputs in their dataset, and the in-place numpy edit
    also changes the caption ids that feed every loss. Per token: selected with probability 0.3 if
    its part-of-speech tag (the token tagged on its own) is a noun or adjective, else 0.05; a
    selected token becomes the mask token (80%), a random token (10%) or stays (10%); a caption
    with nothing selected gets its first word masked. The mask token is id ``vocab_size - 3``
    (49405 with CLIP's vocabulary: SEN puts ``<|mask|>`` there, in the row OpenAI's embedding
    learnt for a rare word).

    Args:
        vocab: token id → token text (CLIP BPE, ``"</w>"`` ends a word), e.g. open_clip's
            ``SimpleTokenizer.decoder``; see `for_tokenizer`.
        attribute_p: selection probability of noun/adjective tokens.
        other_p: selection probability of every other word token.
    """

    def __init__(self, vocab: dict[int, str], attribute_p: float = 0.3, other_p: float = 0.05) -> None:
        if not vocab:
            raise ValueError("TokenCorruption: vocab is empty")
        for name, p in (("attribute_p", attribute_p), ("other_p", other_p)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"TokenCorruption: {name} must be in [0, 1], got {p}")
        self.vocab = vocab
        self.mask_id = max(vocab) - 2
        self.attribute_p = attribute_p
        self.other_p = other_p
        self._attribute: dict[int, bool] = {}

    @classmethod
    def for_tokenizer(cls, tokenizer: Callable, **kwargs: float) -> TokenCorruption:
        """From an open_clip ``SimpleTokenizer`` (or a bound method of an object holding one as
        ``.tokenizer``, such as ``CLIPDualEncoder.tokenize``)."""
        owner = getattr(tokenizer, "__self__", None)
        for candidate in (tokenizer, getattr(owner, "tokenizer", None)):
            decoder = getattr(candidate, "decoder", None)
            if isinstance(decoder, dict):
                return cls(decoder, **kwargs)
        raise TypeError(f"TokenCorruption needs a CLIP BPE tokenizer with a .decoder vocabulary, got {tokenizer!r}")

    def attribute_mask(self, ids: torch.Tensor) -> torch.Tensor:
        """Bool ``ids.shape``: True at noun/adjective tokens (tags are cached per token id)."""
        for i in torch.unique(ids).tolist():
            if i not in self._attribute:
                self._attribute[i] = 0 < i < self.mask_id and _is_attribute_token(self.vocab.get(i, ""))
        table = torch.tensor([self._attribute[i] for i in ids.flatten().tolist()], dtype=torch.bool)
        return table.view(ids.shape)

    def __call__(self, ids: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Corrupted copy of ``ids`` ``(B, L)``."""
        out, _ = corrupt_tokens(
            ids, self.attribute_mask(ids), self.mask_id,
            attribute_p=self.attribute_p, other_p=self.other_p, generator=generator,
        )
        return out

    def __repr__(self) -> str:
        return f"TokenCorruption(attribute_p={self.attribute_p}, other_p={self.other_p}, mask_id={self.mask_id})"
