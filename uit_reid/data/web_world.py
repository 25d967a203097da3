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

A second captioning of the same world, ``world="web-bag"`` (`WEB_BAG`), names the colours and the
garments as two separate lists ("black and red; trousers, a jacket"), each shuffled on its own, as
alt-text often does: colour words and garment words are there, which colour goes where is not. The
same seed draws the same people and images as ``"web"`` (the two worlds share their seed key), so a
model pre-trained on it differs from the shipped ``synthetic`` one in its captions alone. It is the
start where binding must be learnt: real CLIPs bind colours to objects barely above chance.
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

__all__ = ["PARK", "WEB", "WEB_BAG", "make_bag_caption", "make_web_caption"]

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


_BAG_TEMPLATES = (
    "{colours}; {items}",
    "a person in {colours}, {items}",
    "{items} in {colours}",
    "someone wearing {colours}: {items}",
    "pedestrian, {colours}, {items}",
    "colours {colours}, clothes {items}",
)


def make_bag_caption(attrs: dict[str, Any], rng: random.Random) -> str:
    """The colours and the garments of ``attrs`` as two separately shuffled lists (a bag of words).

    Both garments' colours are always named, and both garments; shoes (half the time) add their
    colour to the colour list and "shoes" to the items. Nothing in the caption says which colour
    belongs to which item, so captions teach which colours a person wears but not where.
    """
    colours = [colour_word(attrs["upper_colour"], rng), colour_word(attrs["lower_colour"], rng)]
    items = [article(rng.choice(UPPER_WORDS[attrs["upper_type"]])), rng.choice(LOWER_WORDS[attrs["lower_type"]])]
    if rng.random() < 0.5:
        colours.append(colour_word(attrs["shoes_colour"], rng))
        items.append(rng.choice(SHOE_WORDS))
    colours = list(dict.fromkeys(colours))  # a colour worn twice is named once
    rng.shuffle(colours)
    rng.shuffle(items)
    return rng.choice(_BAG_TEMPLATES).format(colours=" and ".join(colours), items=", ".join(items))


WEB_BAG = World("web-bag", make_bag_caption, PARK, (1, 2), "uit-web")
"""The web world's people captioned as bags of colour and garment words (see the module docstring)."""
