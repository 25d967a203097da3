"""Synthetic pedestrians: the built-in dataset the demo and the tests train on.

Each identity is a set of attributes (skin tone, hair colour and length, upper and lower garment type
and colour, shoe colour, optional bag and hat with colours). Identities come in *families* that share
all but one or two attributes, so retrieval needs fine-grained alignment rather than "red top". Each
image draws the identity with PIL in a random pose, scale, position, background and lighting; two
captions per image come from varied templates and only ever name attributes the image has.

Everything is drawn from seeded generators keyed by (seed, identity, image), so the same seed gives
byte-identical files whatever the number of worker processes.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from uit_reid.data._world import (
    ATTRIBUTE_KEYS,
    BAG_TYPES,
    BAG_WORDS,
    HAIR_COLOURS,
    HAT_WORDS,
    LOWER_TYPES,
    LOWER_WORDS,
    PALETTE,
    SHOE_COLOURS,
    SHOE_WORDS,
    SKIN_TONES,
    SKIN_WORDS,
    UPPER_TYPES,
    UPPER_WORDS,
    RenderStyle,
    World,
    article,
    colour_word,
)
from uit_reid.data.readers import JSONL_NAME
from uit_reid.data.web_world import WEB, WEB_BAG
from uit_reid.io import atomic_write_bytes, atomic_write_text, folder_contents

logger = logging.getLogger(__name__)

# Slots a family variant may change (bag and hat each count as one slot).
_MUTABLE = (
    "upper_colour",
    "upper_type",
    "lower_colour",
    "lower_type",
    "shoes_colour",
    "hair_colour",
    "hair_length",
    "bag",
    "hat",
    "skin",
)


STREET = RenderStyle()
"""The demo's pedestrians: tall in the frame, on a street."""


@dataclass(frozen=True)
class _Job:
    """Everything a worker needs to draw one image (picklable)."""

    path: str
    attributes: dict[str, Any]
    seed: tuple[int, ...]
    size: tuple[int, int]
    style: RenderStyle = STREET


def _palette_colours() -> list[str]:
    """The clothing colour names, in `PALETTE`'s order."""
    return list(PALETTE)


def sample_attributes(rng: random.Random) -> dict[str, Any]:
    """Draw one identity's attributes (``bag``/``bag_colour``/``hat_colour`` are ``None`` when absent)."""
    colours = _palette_colours()
    bag = rng.choice(BAG_TYPES) if rng.random() < 0.45 else None
    hat = rng.choice(colours) if rng.random() < 0.3 else None
    attrs = {
        "skin": rng.choice(list(SKIN_TONES)),
        "hair_colour": rng.choice(list(HAIR_COLOURS)),
        "hair_length": rng.choice(["short", "long"]),
        "upper_type": rng.choice(UPPER_TYPES),
        "upper_colour": rng.choice(colours),
        "lower_type": rng.choices(LOWER_TYPES, weights=[0.55, 0.25, 0.2])[0],
        "lower_colour": rng.choice(colours),
        "shoes_colour": rng.choice(SHOE_COLOURS),
        "bag": bag,
        "bag_colour": rng.choice(colours) if bag else None,
        "hat_colour": hat,
    }
    if attrs["upper_type"] == "coat":  # a knee-length coat would hide shorts or a skirt
        attrs["lower_type"] = "trousers"
    return attrs


def is_drawable(attrs: dict[str, Any]) -> bool:
    """Whether every attribute stays visible when drawn (a coat hides shorts and skirts)."""
    return not (attrs["upper_type"] == "coat" and attrs["lower_type"] != "trousers")


def _mutate(attrs: dict[str, Any], rng: random.Random, n_changes: int) -> dict[str, Any]:
    """A family member: ``attrs`` with ``n_changes`` distinct slots set to different values."""
    out = dict(attrs)
    colours = _palette_colours()
    for slot in rng.sample(_MUTABLE, n_changes):
        if slot == "bag":
            options: list[tuple[str | None, str | None]] = [(None, None)] + [
                (b, c) for b in BAG_TYPES for c in colours
            ]
            options = [o for o in options if o != (out["bag"], out["bag_colour"])]
            out["bag"], out["bag_colour"] = rng.choice(options)
        elif slot == "hat":
            hats = [h for h in [None, *colours] if h != out["hat_colour"]]
            out["hat_colour"] = rng.choice(hats)
        else:
            values = {
                "upper_colour": colours,
                "lower_colour": colours,
                "upper_type": UPPER_TYPES,
                "lower_type": LOWER_TYPES,
                "shoes_colour": SHOE_COLOURS,
                "hair_colour": list(HAIR_COLOURS),
                "hair_length": ["short", "long"],
                "skin": list(SKIN_TONES),
            }[slot]
            out[slot] = rng.choice([v for v in values if v != out[slot]])
    return out


def _key(attrs: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(attrs[k] for k in ATTRIBUTE_KEYS)


def sample_identities(
    num_ids: int, rng: random.Random, family_size: tuple[int, int] = (1, 4)
) -> list[dict[str, Any]]:
    """Draw ``num_ids`` distinct attribute sets in families sharing all but one or two attributes.

    Family members are consecutive in the returned list, so contiguous slices keep families together.
    """
    lo, hi = family_size
    if not 1 <= lo <= hi:
        raise ValueError(f"family_size must satisfy 1 <= low <= high, got {family_size}")
    seen: set[tuple[Any, ...]] = set()
    out: list[dict[str, Any]] = []
    while len(out) < num_ids:
        base = sample_attributes(rng)
        if _key(base) in seen:
            continue
        seen.add(_key(base))
        out.append(base)
        size = rng.randint(lo, hi)
        tries = 0
        while len(out) < num_ids and size > 1 and tries < 50:
            tries += 1
            member = _mutate(base, rng, rng.choice([1, 1, 2]))
            if is_drawable(member) and _key(member) not in seen:
                seen.add(_key(member))
                out.append(member)
                size -= 1
    return out


# --------------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------------
def _join(items: Sequence[str], rng: random.Random) -> str:
    if len(items) == 1:
        return items[0]
    last = rng.choice([" and ", ", and ", " with "]) if len(items) > 2 else rng.choice([" and ", " with "])
    return ", ".join(items[:-1]) + last + items[-1]


def make_caption(attrs: dict[str, Any], rng: random.Random) -> str:
    """One caption naming most of ``attrs`` (garments always) and nothing the person does not have."""
    upper = f"{colour_word(attrs['upper_colour'], rng)} {rng.choice(UPPER_WORDS[attrs['upper_type']])}"
    lower = f"{colour_word(attrs['lower_colour'], rng)} {rng.choice(LOWER_WORDS[attrs['lower_type']])}"
    clothes = [article(upper), lower if attrs["lower_type"] != "skirt" else article(lower)]
    if rng.random() < 0.75:
        clothes.append(f"{colour_word(attrs['shoes_colour'], rng)} {rng.choice(SHOE_WORDS)}")
    rng.shuffle(clothes)

    subject = rng.choice(
        ["A person", "A pedestrian", "The pedestrian", "This person", "Someone", "An individual",
         "The walker", "A young person", "The person"]
    )
    filler = rng.choice(["", "", " walking down the street", " who is walking", " standing on the pavement",
                         " in the picture", " walking along"])
    verb = rng.choice(["is wearing", "wears", "is dressed in", "appears to be wearing", "has on",
                       "seems to be wearing"])

    hair_bits: list[str] = []
    r = rng.random()
    if r < 0.8:
        length = attrs["hair_length"] if rng.random() < 0.85 else ""
        colour = attrs["hair_colour"] if rng.random() < 0.85 or not length else ""
        hair_bits.append(" ".join(w for w in (length, colour, "hair") if w))
    if rng.random() < 0.5:
        hair_bits.append(f"{rng.choice(SKIN_WORDS[attrs['skin']])} skin")

    extras: list[str] = []
    if attrs["bag"] and rng.random() < 0.9:
        bag = f"{colour_word(attrs['bag_colour'], rng)} {rng.choice(BAG_WORDS[attrs['bag']])}"
        extras.append(rng.choice(["carrying ", "holding "]) + article(bag))
    if attrs["hat_colour"] and rng.random() < 0.9:
        hat = f"{colour_word(attrs['hat_colour'], rng)} {rng.choice(HAT_WORDS)}"
        extras.append(rng.choice(["wearing ", "sporting "]) + article(hat))

    style = rng.randrange(3)
    sentences: list[str] = []
    if style == 0:  # subject + clothes, then hair, then extras
        sentences.append(f"{subject}{filler} {verb} {_join(clothes, rng)}")
        if hair_bits:
            who = rng.choice(["The person has", "They have", "This pedestrian has", "The individual has"])
            sentences.append(f"{who} {_join(hair_bits, rng)}")
        if extras:
            who = rng.choice(["They are", "The person is", "The pedestrian is", "This person is also"])
            sentences.append(f"{who} {_join(extras, rng)}")
    elif style == 1:  # one long sentence, hair first
        head = f"{subject} with {_join(hair_bits, rng)}" if hair_bits else subject
        tail = f", {_join(extras, rng)}" if extras else ""
        sentences.append(f"{head}{filler} {verb} {_join(clothes, rng)}{tail}")
    else:  # extras first, then clothes, hair last
        lead = f"{extras[0][0].upper()}{extras[0][1:]}, " if extras else ""
        subj = subject[0].lower() + subject[1:] if lead else subject
        rest = f" and {_join(extras[1:], rng)}" if len(extras) > 1 else ""
        sentences.append(f"{lead}{subj}{filler} {verb} {_join(clothes, rng)}{rest}")
        if hair_bits:
            who = rng.choice(["The person has", "They have", "This person has"])
            sentences.append(f"{who} {_join(hair_bits, rng)}")
    return " ".join(s[0].upper() + s[1:] + "." for s in sentences)


# --------------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------------
def _jitter(rgb: tuple[int, int, int], rng: np.random.Generator, amount: int = 10) -> tuple[int, int, int]:
    d = rng.integers(-amount, amount + 1, size=3)
    return tuple(int(v) for v in np.clip(np.array(rgb) + d, 0, 255))  # type: ignore[return-value]


def _park_background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A muted park-like background: olive/earth gradient, soft round foliage blobs, a grass band."""
    base = np.array([rng.uniform(80, 150), rng.uniform(95, 165), rng.uniform(70, 130)], dtype=np.float32)
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    img = np.broadcast_to(base * (1.05 - 0.3 * t), (h, w, 3)).copy()
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(int(rng.integers(2, 6))):  # trees and bushes: muted, low-saturation ellipses
        cy, cx = rng.uniform(0, h * 0.75), rng.uniform(-0.2 * w, 1.2 * w)
        ry, rx = rng.uniform(h / 10, h / 4), rng.uniform(w / 5, w / 2)
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        img[inside] = np.clip(base * rng.uniform(0.6, 0.9) + rng.uniform(-10, 10, size=3), 0, 255)
    gy = int(h * rng.uniform(0.65, 0.85))
    img[gy:] = img[gy:] * 0.5 + np.array([95, 125, 70], dtype=np.float32) * rng.uniform(0.8, 1.1) * 0.5
    small = rng.normal(0, 7, size=(max(h // 16, 2), max(w // 16, 2))).astype(np.float32)
    blot = np.asarray(Image.fromarray(small, mode="F").resize((w, h), Image.BILINEAR))
    return img + blot[:, :, None]


def _background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A muted street-like background: sky/wall gradient, a few blocks, a ground band, blotchy light."""
    grey = rng.uniform(70, 200)
    tint = rng.uniform(-22, 22, size=3)
    top = np.clip(grey + tint + rng.uniform(-25, 25), 0, 255)
    bottom = np.clip(grey * rng.uniform(0.6, 1.1) + tint * 0.5, 0, 255)
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    img = np.broadcast_to(top * (1 - t) + bottom * t, (h, w, 3)).copy()
    for _ in range(int(rng.integers(1, 5))):  # buildings, windows, poles: muted blocks
        y0 = int(rng.integers(0, int(h * 0.7)))
        x0 = int(rng.integers(-w // 4, w))
        bh, bw = int(rng.integers(h // 12, h // 2)), int(rng.integers(w // 8, w // 2))
        g = rng.uniform(50, 210)
        img[max(y0, 0) : y0 + bh, max(x0, 0) : x0 + bw] = np.clip(g + rng.uniform(-18, 18, size=3), 0, 255)
    gy = int(h * rng.uniform(0.72, 0.88))
    img[gy:] = img[gy:] * 0.55 + np.clip(rng.uniform(80, 170) + rng.uniform(-10, 10, size=3), 0, 255) * 0.45
    # low-frequency lighting blotches (cheap to compress, unlike per-pixel noise)
    small = rng.normal(0, 9, size=(max(h // 16, 2), max(w // 16, 2))).astype(np.float32)
    blot = np.asarray(Image.fromarray(small, mode="F").resize((w, h), Image.BILINEAR))
    return img + blot[:, :, None]


@dataclass
class _Body:
    """One drawn person's geometry and colours (all random draws made up front, in `render_person`'s order)."""

    d: ImageDraw.ImageDraw
    attrs: dict[str, Any]
    cx: float  # centre column
    top: float  # row of the head's top
    u: float  # one body unit: a hundredth of the person's height
    view: str  # "front" or "back"
    side: int  # which side the bag hangs on
    stride: float
    swing: float
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    upper: tuple[int, int, int]
    lower: tuple[int, int, int]
    shoes: tuple[int, int, int]

    def y(self, f: float) -> float:
        """Body fraction (0 top, 100 soles) -> pixel row."""
        return self.top + f * self.u

    @property
    def shoulder_w(self) -> float:
        return 12.0 * self.u

    @property
    def hip_w(self) -> float:
        return 9.5 * self.u

    @property
    def limb(self) -> int:
        return max(int(round(5.2 * self.u)), 3)

    @property
    def arm(self) -> int:
        return max(int(round(4.2 * self.u)), 3)

    @property
    def head(self) -> tuple[float, float, float]:
        """Head width, top and bottom rows."""
        return 8.5 * self.u, self.y(1.5), self.y(13.5)


def _draw_legs(b: _Body) -> None:
    """Legs (hip -> knee -> ankle, thick lines) with trousers or shorts and shoes; then skirt or pelvis."""
    d, u, cx, y, limb, hip_w, ltype = b.d, b.u, b.cx, b.y, b.limb, b.hip_w, b.attrs["lower_type"]
    for s in (-1, 1):
        hip = (cx + s * hip_w / 2 - s * limb / 2, y(50))
        ankle = (cx + s * (hip_w / 2 - limb / 2 + b.stride / 2), y(93.5))
        knee = ((hip[0] + ankle[0]) / 2, y(71))
        d.line([hip, knee, ankle], fill=b.skin, width=limb)
        if ltype == "trousers":
            d.line([hip, knee, ankle], fill=b.lower, width=limb + 1)
        elif ltype == "shorts":
            k = (hip[0] + (ankle[0] - hip[0]) * 0.38, y(66.5))
            d.line([hip, k], fill=b.lower, width=limb + 2)
        # shoes
        d.rectangle([ankle[0] - limb / 2 - 1.2 * u, y(93.5), ankle[0] + limb / 2 + 1.2 * u, y(99.5)], fill=b.shoes)
    if ltype == "skirt":
        d.polygon([(cx - hip_w / 2 - u, y(47)), (cx + hip_w / 2 + u, y(47)), (cx + hip_w / 2 + 4.5 * u, y(72)),
                   (cx - hip_w / 2 - 4.5 * u, y(72))], fill=b.lower)
    else:  # pelvis
        d.rectangle([cx - hip_w / 2, y(47), cx + hip_w / 2, y(54)], fill=b.lower)


def _draw_arms(b: _Body) -> list[tuple[float, float]]:
    """Arms (shoulder -> hand) with sleeves for the upper garment; returns the two hands."""
    sleeve_end = {"t-shirt": 0.35, "tank top": 0.0}.get(b.attrs["upper_type"], 0.88)
    hands = []
    for s in (-1, 1):
        sh = (b.cx + s * (b.shoulder_w / 2 + b.arm / 2 - 0.5 * b.u), b.y(17.5))
        hand = (b.cx + s * (b.shoulder_w / 2 + b.arm / 2 + 0.8 * b.u) + s * b.swing * 0.3, b.y(50) + abs(b.swing) * 0.2)
        b.d.line([sh, hand], fill=b.skin, width=b.arm)
        if sleeve_end > 0:
            e = (sh[0] + (hand[0] - sh[0]) * sleeve_end, sh[1] + (hand[1] - sh[1]) * sleeve_end)
            b.d.line([sh, e], fill=b.upper, width=b.arm + 1)
        hands.append(hand)
    return hands


def _draw_torso(b: _Body) -> None:
    """The upper garment's body (a tank top shows the shoulders), with a zip line and collar from the front."""
    d, u, cx, y, shoulder_w, hip_w = b.d, b.u, b.cx, b.y, b.shoulder_w, b.hip_w
    utype, upper = b.attrs["upper_type"], b.upper
    bottom = {"coat": 72.0, "jacket": 53.0}.get(utype, 50.0)
    flare = 2.5 * u if utype == "coat" else 0.0
    if utype == "tank top":
        d.polygon([(cx - shoulder_w / 2 + 1.5 * u, y(16)), (cx + shoulder_w / 2 - 1.5 * u, y(16)),
                   (cx + hip_w / 2 + 0.8 * u, y(bottom)), (cx - hip_w / 2 - 0.8 * u, y(bottom))], fill=upper)
        d.rectangle([cx - shoulder_w / 2, y(15.5), cx - shoulder_w / 2 + 1.5 * u, y(20)], fill=b.skin)
        d.rectangle([cx + shoulder_w / 2 - 1.5 * u, y(15.5), cx + shoulder_w / 2, y(20)], fill=b.skin)
    else:
        d.polygon([(cx - shoulder_w / 2, y(15.5)), (cx + shoulder_w / 2, y(15.5)),
                   (cx + hip_w / 2 + 0.8 * u + flare, y(bottom)), (cx - hip_w / 2 - 0.8 * u - flare, y(bottom))],
                  fill=upper)
    if utype in ("jacket", "coat") and b.view == "front":  # zip / button line and collar
        dark = tuple(int(c * 0.55) for c in upper)
        d.line([(cx, y(17)), (cx, y(bottom))], fill=dark, width=max(int(1.6 * u), 2))
        d.polygon([(cx - 3.5 * u, y(15.5)), (cx, y(20.5)), (cx + 3.5 * u, y(15.5))], fill=dark)


def _draw_head(b: _Body, hat: tuple[int, int, int] | None) -> None:
    """Neck, face, hair (back or front view) and the hat."""
    d, u, cx = b.d, b.u, b.cx
    head_w, head_top, head_bot = b.head
    d.rectangle([cx - 1.8 * u, b.y(12), cx + 1.8 * u, b.y(16)], fill=b.skin)
    d.ellipse([cx - head_w / 2, head_top, cx + head_w / 2, head_bot], fill=b.skin)
    if b.view == "back":
        d.ellipse([cx - head_w / 2, head_top, cx + head_w / 2, head_bot - (0 if b.attrs["hair_length"] == "long"
                                                                          else 2.5 * u)], fill=b.hair)
    else:
        d.chord([cx - head_w / 2, head_top, cx + head_w / 2, head_top + 7 * u], 180, 360, fill=b.hair)
        d.rectangle([cx - head_w / 2, head_top + 2.5 * u, cx - head_w / 2 + 1.3 * u, b.y(9)], fill=b.hair)
        d.rectangle([cx + head_w / 2 - 1.3 * u, head_top + 2.5 * u, cx + head_w / 2, b.y(9)], fill=b.hair)
    if hat is not None:
        d.chord([cx - head_w / 2 - 0.4 * u, head_top - 2.5 * u, cx + head_w / 2 + 0.4 * u, head_top + 7 * u],
                180, 360, fill=hat)
        d.rectangle([cx - head_w / 2 - 1.8 * u, head_top + 1.8 * u, cx + head_w / 2 + 1.8 * u,
                     head_top + 3.6 * u], fill=hat)


def _draw_bag_in_front(b: _Body, bag_rgb: tuple[int, int, int] | None, hands: list[tuple[float, float]]) -> None:
    """The bag's parts in front of the body: a backpack from behind or its straps, a handbag, a shoulder bag."""
    d, u, cx, y, bag, side = b.d, b.u, b.cx, b.y, b.attrs["bag"], b.side
    if bag == "backpack" and b.view == "back":
        d.rectangle([cx - b.shoulder_w * 0.38, y(19), cx + b.shoulder_w * 0.38, y(45)], fill=bag_rgb)
    elif bag == "backpack":  # straps
        for s in (-1, 1):
            d.line([(cx + s * b.shoulder_w * 0.3, y(16)), (cx + s * b.shoulder_w * 0.32, y(38))], fill=bag_rgb,
                   width=max(int(1.6 * u), 2))
    elif bag == "handbag":
        hx, hy = hands[0 if side < 0 else 1]
        d.line([(hx, hy), (hx, hy + 4 * u)], fill=bag_rgb, width=max(int(u), 2))
        d.rectangle([hx - 4 * u, hy + 3.5 * u, hx + 4 * u, hy + 13 * u], fill=bag_rgb)
    elif bag == "shoulder bag":
        sx = cx - side * b.shoulder_w * 0.35
        bx = cx + side * (b.hip_w / 2 + 2.5 * u)
        d.line([(sx, y(16)), (bx, y(46))], fill=bag_rgb, width=max(int(1.6 * u), 2))
        d.rectangle([bx - 4.5 * u, y(43), bx + 4.5 * u, y(54)], fill=bag_rgb)


def render_person(
    attrs: dict[str, Any], seed: Sequence[int], size: tuple[int, int] = (192, 64), style: RenderStyle = STREET
) -> Image.Image:
    """Draw one image of the person ``attrs`` (pose, scale, background and lighting from ``seed``).

    ``size`` is (height, width); ``style`` sets the person's height range, back views and background.
    Parts are at least ~4 px thick at 192x64 so they survive downscaling to 96x32. The random draws
    are made here, in a fixed order (the images of a seed never change); the parts are drawn back to front.
    """
    h, w = size
    rng = np.random.default_rng(list(seed))
    bg = _park_background(h, w, rng) if style.background == "park" else _background(h, w, rng)
    im = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8), mode="RGB")
    ph = h * rng.uniform(*style.person_height)  # person height in pixels
    top = (h - ph) * rng.uniform(0.2, 0.8)
    b = _Body(
        d=ImageDraw.Draw(im), attrs=attrs, u=ph / 100.0, top=top, cx=w / 2 + rng.uniform(-0.07, 0.07) * w,
        view="back" if rng.random() < style.back_view_p else "front", side=1 if rng.random() < 0.5 else -1,
        stride=rng.uniform(0, 9) * (ph / 100.0), swing=rng.uniform(-4, 4) * (ph / 100.0),
        skin=_jitter(SKIN_TONES[attrs["skin"]], rng, 8), hair=_jitter(HAIR_COLOURS[attrs["hair_colour"]], rng, 8),
        upper=_jitter(PALETTE[attrs["upper_colour"]], rng), lower=_jitter(PALETTE[attrs["lower_colour"]], rng),
        shoes=_jitter(PALETTE[attrs["shoes_colour"]], rng),
    )
    bag_rgb = _jitter(PALETTE[attrs["bag_colour"]], rng) if attrs["bag"] else None
    hat = _jitter(PALETTE[attrs["hat_colour"]], rng) if attrs["hat_colour"] else None

    if attrs["hair_length"] == "long":  # long hair hangs behind the head and shoulders
        head_w = b.head[0]
        b.d.rectangle([b.cx - head_w * 0.62, b.y(5), b.cx + head_w * 0.62, b.y(27)], fill=b.hair)
    _draw_legs(b)
    if attrs["bag"] == "backpack" and b.view == "front":  # from the front a backpack peeks out at one side
        s = b.side
        b.d.rectangle([b.cx + s * b.shoulder_w / 2 - (0 if s > 0 else 4 * b.u), b.y(18),
                       b.cx + s * b.shoulder_w / 2 + (4 * b.u if s > 0 else 0), b.y(44)], fill=bag_rgb)
    hands = _draw_arms(b)
    _draw_torso(b)
    _draw_head(b, hat)
    _draw_bag_in_front(b, bag_rgb, hands)

    # global lighting: brightness and a mild colour cast
    arr = np.asarray(im).astype(np.float32)
    arr = arr * rng.uniform(0.86, 1.12) + rng.uniform(-8, 8, size=3)
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), mode="RGB")


PEDESTRIANS = World("pedestrians", make_caption, STREET, (1, 4), "uit-synthetic")
"""The demo's world: full descriptions (both garments with their colours), street scenes, families of look-alikes."""

WORLD_NAMES = ("pedestrians", "web", "web-bag")
"""The synthetic worlds ``make_synthetic`` can write (``world=``)."""


def synthetic_world(name: str) -> World:
    """The `World` called ``name`` (one of `WORLD_NAMES`)."""
    if name == "pedestrians":
        return PEDESTRIANS
    if name == "web":
        return WEB
    if name == "web-bag":
        return WEB_BAG
    raise ValueError(f"unknown synthetic world {name!r}; choose one of {list(WORLD_NAMES)}")


def _render_job(job: _Job) -> None:
    img = render_person(job.attributes, job.seed, job.size, job.style)
    buffer = io.BytesIO()
    img.save(buffer, format="PNG", compress_level=6, optimize=False)
    atomic_write_bytes(job.path, buffer.getvalue())


# --------------------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------------------
def _split_sizes(num_ids: int, num_val_ids: int | None, num_test_ids: int | None) -> tuple[int, int, int]:
    n_test = max(1, round(0.2 * num_ids)) if num_test_ids is None else num_test_ids
    n_val = round(0.1 * num_ids) if num_val_ids is None else num_val_ids
    n_train = num_ids - n_test - n_val
    if n_test < 0 or n_val < 0 or n_train < 0:
        raise ValueError(
            f"split sizes do not fit: num_ids={num_ids}, num_val_ids={n_val}, num_test_ids={n_test}"
        )
    return n_train, n_val, n_test


SYNTHETIC_MARKER = ".uit_reid_synthetic"
"""File ``make_synthetic`` leaves in its folder: such a folder may be written again."""


def check_synthetic_target(root: Path, force: bool = False) -> None:
    """Refuse a folder that holds files ``make_synthetic`` did not write (see `make_synthetic`)."""
    if force or not root.exists() or (root / SYNTHETIC_MARKER).is_file():
        return
    if not root.is_dir():
        raise FileExistsError(f"{root} exists and is not a folder")
    shown = folder_contents(root, 3)
    if shown:
        raise FileExistsError(
            f"{root} holds files that make_synthetic did not write ({shown}); write the synthetic dataset "
            "into an empty folder, or pass --force (force=True) to write into this one anyway"
        )


def _plan_images(
    root: Path, kind: World, identities: list[dict[str, Any]], split_of: list[str], images_per_id: int,
    captions_per_image: int, image_size: tuple[int, int], seed: int,
) -> tuple[list[dict[str, Any]], list[_Job]]:
    """Each image's annotation record (captions drawn from its own seeded stream) and render job."""
    width = max(5, len(str(len(identities) - 1)))
    records: list[dict[str, Any]] = []
    jobs: list[_Job] = []
    for pid, attrs in enumerate(identities):
        for k in range(images_per_id):
            rel = f"imgs/{pid:0{width}d}_{k:02d}.png"
            cap_rng = random.Random(f"{kind.key}-cap-{seed}-{pid}-{k}")
            captions = [kind.caption(attrs, cap_rng) for _ in range(captions_per_image)]
            records.append(
                {"image": rel, "pid": pid, "captions": captions, "split": split_of[pid], "attributes": attrs}
            )
            render_seed = (seed, pid, k) if kind is PEDESTRIANS else (seed, pid, k, *kind.key.encode())
            jobs.append(_Job(str(root / rel), attrs, render_seed, tuple(image_size), kind.style))  # type: ignore[arg-type]
    return records, jobs


def _render_all(jobs: list[_Job], workers: int, progress: bool) -> None:
    """Render and write every job's image, in ``workers`` processes (each image depends on its job alone)."""
    bar = tqdm(total=len(jobs), desc="synthetic pedestrians", disable=not progress, unit="img")
    if workers <= 1:
        for job in jobs:
            _render_job(job)
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=workers) as ex:
            for _ in ex.map(_render_job, jobs, chunksize=64):
                bar.update()
    bar.close()


def make_synthetic(
    root: str | os.PathLike[str],
    num_ids: int = 1000,
    images_per_id: int = 4,
    seed: int = 0,
    *,
    num_val_ids: int | None = None,
    num_test_ids: int | None = None,
    captions_per_image: int = 2,
    image_size: tuple[int, int] = (192, 64),
    family_size: tuple[int, int] | None = None,
    workers: int = 1,
    progress: bool = True,
    force: bool = False,
    world: str = "pedestrians",
) -> Path:
    """Write a synthetic pedestrian dataset to ``root``; return the path of its JSONL annotations.

    ``root/imgs/`` gets ``num_ids * images_per_id`` PNGs of ``image_size`` (height, width) and
    ``root/annotations.jsonl`` one record per image (``image``, ``pid``, ``captions``, ``split`` and an
    ``attributes`` object, read into `PersonRecord.attributes`). Identities are split disjointly: the first
    ``num_test_ids`` (default 20%) go to test, the next ``num_val_ids`` (default 10%) to val, the rest to
    train; families stay together except at the two boundaries. Same arguments -> byte-identical files
    for any ``workers``. The annotation file is written last, to a temporary name, then renamed.

    ``root`` must be empty, missing, or a folder an earlier ``make_synthetic`` wrote (it leaves a
    ``SYNTHETIC_MARKER`` file); anything else raises ``FileExistsError`` naming the folder, unless
    ``force=True``, so a user's dataset is never overwritten or mixed with synthetic pedestrians.

    ``world`` picks the captions and staging (`WORLD_NAMES`): ``"pedestrians"``, the demo's full
    descriptions, or ``"web"``, the pre-training world of short alt-text-like captions
    (`uit_reid.data.web_world`). ``family_size`` defaults to the world's.
    """
    if num_ids < 1 or images_per_id < 1 or captions_per_image < 1:
        raise ValueError("num_ids, images_per_id and captions_per_image must be >= 1")
    kind = synthetic_world(world)
    n_train, n_val, n_test = _split_sizes(num_ids, num_val_ids, num_test_ids)
    root = Path(root)
    check_synthetic_target(root, force)
    img_dir = root / "imgs"
    img_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / SYNTHETIC_MARKER, "written by uit_reid.data.make_synthetic\n")

    identities = sample_identities(num_ids, random.Random(f"{kind.key}-ids-{seed}"), family_size or kind.family_size)
    split_of = ["test"] * n_test + ["val"] * n_val + ["train"] * n_train
    records, jobs = _plan_images(root, kind, identities, split_of, images_per_id, captions_per_image, image_size, seed)
    _render_all(jobs, workers, progress)
    ann = root / JSONL_NAME
    atomic_write_text(ann, "".join(json.dumps(rec, sort_keys=True, ensure_ascii=False) + "\n" for rec in records))
    logger.info(
        "make_synthetic (%s): %d ids (%d train / %d val / %d test) x %d images -> %s",
        kind.name, num_ids, n_train, n_val, n_test, images_per_id, ann,
    )
    return ann
