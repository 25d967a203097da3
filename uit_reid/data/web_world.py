"""The pre-training world: synthetic people with short, loose, alt-text-like captions.

It stands in for the web image-text pairs real CLIPs are pre-trained on, so the demo can fine-tune a
pre-trained model as users do. It reuses the pedestrians' attributes (`uit_reid.data._world`) and
renderer (`uit_reid.data.synthetic`) but differs from the demo's world on purpose:

- captions name one to three salient attributes ("a red jacket", "blue backpack, long hair"), and
  never both garments with their colours: binding colours to garments is left to fine-tuning;
- people stand smaller in the frame, are seen from the back more often, and stand in parks, not
  streets;
- identities, captions and renderings come from their own seed streams (key ``"uit-web"``), and
  families of look-alikes are smaller (one to two members).

``make_synthetic(root, ..., world="web")`` writes it.
"""

from __future__ import annotations

import random
from typing import Any

from uit_reid.data._world import (
    BAG_WORDS,
    HAT_WORDS,
    LOWER_WORDS,
    SHOE_WORDS,
    SKIN_WORDS,
    UPPER_WORDS,
    RenderStyle,
    World,
    article,
    colour_word,
)

__all__ = ["PARK", "WEB", "make_web_caption"]

PARK = RenderStyle(person_height=(0.62, 0.85), back_view_p=0.5, background="park")
"""The web world's staging: smaller people, more back views, park backgrounds."""

_TEMPLATES = (
    "{}",
    "a person in {}",
    "photo of a person with {}",
    "someone wearing {}",
    "pedestrian, {}",
    "a picture of someone with {}",
    "outdoor shot: {}",
    "a walker with {}",
)


def _phrases(attrs: dict[str, Any], rng: random.Random) -> tuple[str, list[str]]:
    """The coloured garment's phrase (upper or lower, at random) and the other candidate phrases."""
    upper_word = rng.choice(UPPER_WORDS[attrs["upper_type"]])
    lower_word = rng.choice(LOWER_WORDS[attrs["lower_type"]])
    upper = article(f"{colour_word(attrs['upper_colour'], rng)} {upper_word}")
    lower = f"{colour_word(attrs['lower_colour'], rng)} {lower_word}"
    if rng.random() < 0.5:
        garment, out = upper, [lower_word]
    else:
        garment, out = lower, [article(upper_word)]
    out.append(f"{colour_word(attrs['shoes_colour'], rng)} {rng.choice(SHOE_WORDS)}")
    out.append(f"{attrs['hair_length']} {attrs['hair_colour']} hair")
    out.append(f"{rng.choice(SKIN_WORDS[attrs['skin']])} skin")
    if attrs["bag"]:
        out.append(article(f"{colour_word(attrs['bag_colour'], rng)} {rng.choice(BAG_WORDS[attrs['bag']])}"))
    if attrs["hat_colour"]:
        out.append(article(f"{colour_word(attrs['hat_colour'], rng)} {rng.choice(HAT_WORDS)}"))
    return garment, out


def make_web_caption(attrs: dict[str, Any], rng: random.Random) -> str:
    """A short caption naming one to three salient attributes of ``attrs``, alt-text style.

    The coloured garment (upper or lower, one of them) is always among the named attributes, since it
    is what web captions mention most; the other garment, if named, carries no colour.
    """
    garment, others = _phrases(attrs, rng)
    chosen = [garment, *rng.sample(others, rng.randint(0, min(2, len(others))))]
    rng.shuffle(chosen)
    joined = chosen[0] if len(chosen) == 1 else ", ".join(chosen[:-1]) + rng.choice([" and ", ", "]) + chosen[-1]
    return rng.choice(_TEMPLATES).format(joined)


WEB = World("web", make_web_caption, PARK, (1, 2), "uit-web")
"""The pre-training world (see the module docstring)."""
