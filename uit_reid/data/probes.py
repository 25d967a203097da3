"""Attribute-binding probes: caption pairs that differ only in which item carries which colour.

A retrieval model can know every word of "red jacket and black trousers" and still not know which
garment is red. For each image whose record carries `attributes`, a probe is one *true* caption and
one *contrast* caption built from the same template:

- ``binding``: upper vs lower garment colours swapped ("a person wearing red jacket and black
  trousers" vs "a person wearing black jacket and red trousers"); only images whose two garments differ
  in colour.
- ``presence``: the same images, one garment colour (upper on even probes, lower on odd ones) replaced
  by a colour the person wears nowhere, drawn from the colours the split's garments use. A model that
  reads the colour words at all wins this control even if it cannot bind them.
- ``binding_shoe_upper``: upper garment vs shoe colours swapped.
- ``binding_bag_hat``: hat vs bag colours swapped (people with both, in different colours).

The captions carry no articles, so a binding contrast is a permutation of its true caption's words:
a model that ignores word order gives both the same score. Records name their attributes with the
keys `uit_reid.data.make_synthetic` writes (``upper_type``, ``upper_colour``, ``lower_type``,
``lower_colour``, ``shoes_colour``, ``bag``, ``bag_colour``, ``hat_colour``; ``None`` = absent); a
record lacking a probe's keys is left out of that probe.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from uit_reid.data.records import Attributes, PersonRecord

__all__ = ["PROBE_KINDS", "Probes", "binding_probes"]

PROBE_KINDS = ("binding", "presence", "binding_shoe_upper", "binding_bag_hat")
"""The probes `binding_probes` builds, in its order (each is also the metric's name)."""

_GARMENTS = ("upper_type", "upper_colour", "lower_type", "lower_colour")


@dataclass
class Probes:
    """One probe kind over a split: for each entry, the image (``image_id``) and its two captions."""

    image_ids: list[int] = field(default_factory=list)
    true: list[str] = field(default_factory=list)
    contrast: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.image_ids)

    def add(self, image_id: int, true: str, contrast: str) -> None:
        self.image_ids.append(image_id)
        self.true.append(true)
        self.contrast.append(contrast)


def _garments(upper_colour: str, a: Mapping[str, str], lower_colour: str) -> str:
    return f"a person wearing {upper_colour} {a['upper_type']} and {lower_colour} {a['lower_type']}"


def _shoes(upper_colour: str, a: Mapping[str, str], shoes_colour: str) -> str:
    return f"a person wearing {upper_colour} {a['upper_type']} and {shoes_colour} shoes"


def _bag_hat(hat_colour: str, a: Mapping[str, str], bag_colour: str) -> str:
    return f"a person wearing {hat_colour} hat and carrying {bag_colour} {a['bag']}"


# swap probes: (name, keys the record needs, first colour key, second colour key, caption template)
_SWAPS: tuple[tuple[str, tuple[str, ...], str, str, Callable[[str, Mapping[str, str], str], str]], ...] = (
    ("binding", _GARMENTS, "upper_colour", "lower_colour", _garments),
    ("binding_shoe_upper", ("upper_type", "upper_colour", "shoes_colour"), "upper_colour", "shoes_colour", _shoes),
    ("binding_bag_hat", ("hat_colour", "bag", "bag_colour"), "hat_colour", "bag_colour", _bag_hat),
)


def _values(a: Attributes | None, keys: Sequence[str]) -> dict[str, str] | None:
    """``a``'s values for ``keys`` when every one is a string (present), else ``None``."""
    if not a or not all(isinstance(a.get(k), str) for k in keys):
        return None
    return {k: str(a[k]) for k in keys}


def binding_probes(records: Sequence[PersonRecord], seed: int = 0) -> dict[str, Probes]:
    """The probes of `PROBE_KINDS` that at least one of ``records`` supports, in record order.

    ``seed`` fixes the presence control's replacement colours. Records without attributes are
    skipped; an empty dict means the records carry none a probe can use.
    """
    rng = random.Random(f"uit-binding-presence-{seed}")
    garments = [g for g in (_values(r.attributes, _GARMENTS) for r in records) if g is not None]
    palette = sorted({g[k] for g in garments for k in ("upper_colour", "lower_colour")})
    probes = {kind: Probes() for kind in PROBE_KINDS}
    for r in records:
        for name, keys, first, second, caption in _SWAPS:
            v = _values(r.attributes, keys)
            if v is not None and v[first] != v[second]:
                probes[name].add(r.image_id, caption(v[first], v, v[second]), caption(v[second], v, v[first]))
        g = _values(r.attributes, _GARMENTS)
        if g is None or g["upper_colour"] == g["lower_colour"]:
            continue
        worn = {v for k, v in (r.attributes or {}).items() if k.endswith("_colour")}
        unworn = [c for c in palette if c not in worn]
        if not unworn:
            continue
        upper, lower, other = g["upper_colour"], g["lower_colour"], rng.choice(unworn)
        if len(probes["presence"]) % 2 == 0:
            contrast = _garments(other, g, lower)
        else:
            contrast = _garments(upper, g, other)
        probes["presence"].add(r.image_id, _garments(upper, g, lower), contrast)
    return {kind: p for kind, p in probes.items() if len(p)}
