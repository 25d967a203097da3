"""What every synthetic world is made of: the attribute vocabulary and how a world stages and captions people.

`uit_reid.data.synthetic` (the demo's pedestrians, the renderer, ``make_synthetic``) and
`uit_reid.data.web_world` (the pre-training world) both build on it, and neither imports the other
for it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# --------------------------------------------------------------------------------------------------
# Vocabulary. Colours are a small palette of clearly named colours; lighting jitter stays well inside
# the gaps between them so a named colour never turns into another.
# --------------------------------------------------------------------------------------------------
PALETTE: dict[str, tuple[int, int, int]] = {
    "black": (28, 28, 30),
    "white": (238, 238, 235),
    "grey": (128, 128, 128),
    "red": (205, 30, 35),
    "blue": (35, 70, 205),
    "green": (35, 150, 55),
    "yellow": (240, 215, 40),
    "pink": (250, 145, 190),
    "purple": (125, 45, 165),
    "orange": (250, 125, 20),
    "brown": (125, 72, 30),
}
COLOUR_WORDS: dict[str, list[str]] = {c: [c] for c in PALETTE}
COLOUR_WORDS["grey"] = ["grey", "gray"]

HAIR_COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (22, 20, 20),
    "brown": (105, 62, 28),
    "blonde": (225, 195, 95),
    "grey": (160, 160, 160),
}
SKIN_TONES: dict[str, tuple[int, int, int]] = {
    "light": (240, 200, 170),
    "medium": (200, 145, 100),
    "dark": (95, 62, 45),
}
SKIN_WORDS = {"light": ["light", "fair", "pale"], "medium": ["tan", "medium", "olive"], "dark": ["dark", "deep"]}
SHOE_COLOURS = ["black", "white", "brown", "grey", "red", "blue"]

UPPER_TYPES = ["t-shirt", "sweater", "jacket", "coat", "tank top"]
UPPER_WORDS: dict[str, list[str]] = {
    "t-shirt": ["t-shirt", "tee", "short-sleeved shirt"],
    "sweater": ["sweater", "long-sleeved top", "jumper"],
    "jacket": ["jacket", "zip-up jacket"],
    "coat": ["coat", "long coat", "overcoat"],
    "tank top": ["tank top", "sleeveless top", "vest"],
}
LOWER_TYPES = ["trousers", "shorts", "skirt"]
LOWER_WORDS: dict[str, list[str]] = {
    "trousers": ["trousers", "pants", "long pants"],
    "shorts": ["shorts", "short pants"],
    "skirt": ["skirt"],
}
SHOE_WORDS = ["shoes", "sneakers", "footwear"]
BAG_TYPES = ["backpack", "handbag", "shoulder bag"]
BAG_WORDS: dict[str, list[str]] = {
    "backpack": ["backpack", "rucksack"],
    "handbag": ["handbag", "purse"],
    "shoulder bag": ["shoulder bag", "messenger bag"],
}
HAT_WORDS = ["hat", "cap"]

ATTRIBUTE_KEYS = (
    "skin",
    "hair_colour",
    "hair_length",
    "upper_type",
    "upper_colour",
    "lower_type",
    "lower_colour",
    "shoes_colour",
    "bag",
    "bag_colour",
    "hat_colour",
)


@dataclass(frozen=True)
class RenderStyle:
    """How a world stages its people: person height (fraction of the image), back views, background."""

    person_height: tuple[float, float] = (0.80, 0.95)
    back_view_p: float = 0.35
    background: str = "street"  # "street" (walls, blocks, pavement) or "park" (foliage blobs, grass)


@dataclass(frozen=True)
class World:
    """A synthetic world: how people are captioned and staged, and the seed streams it draws from.

    Two worlds given the same ``seed`` still draw different identities, captions and renderings,
    because every generator is keyed by the world's ``key`` as well.
    """

    name: str
    caption: Callable[[dict[str, Any], random.Random], str]
    style: RenderStyle
    family_size: tuple[int, int]
    key: str


def article(phrase: str) -> str:
    """``phrase`` with its indefinite article ("a red coat", "an orange cap")."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def colour_word(colour: str, rng: random.Random) -> str:
    """A word for a palette colour (``grey`` is sometimes "gray")."""
    return rng.choice(COLOUR_WORDS[colour])
