"""Weights shipped inside the package, loaded by open_clip-style tags with no download.

``CLIPDualEncoder.from_open_clip("uit-tiny", pretrained="synthetic")`` (or ``model.pretrained =
"synthetic"`` in a config) resolves here to a file in this folder. Each file's SHA-256 is recorded
below and checked before loading, so a changed or damaged file is refused rather than used.
The model card beside each file says how it was trained and what it scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from uit_reid.io import file_sha256

__all__ = [
    "CHECK_SPLIT",
    "SHIPPED",
    "SHIPPED_DIR",
    "SHIPPED_TIR_HEADS",
    "ShippedWeights",
    "shipped_tags",
    "shipped_tir_head",
    "shipped_weights",
]

SHIPPED_DIR = Path(__file__).resolve().parent
"""The folder the shipped files live in."""


@dataclass(frozen=True)
class ShippedWeights:
    """One shipped checkpoint: its file name in `SHIPPED_DIR`, the SHA-256 it must have, and the
    (rows, columns) patch grid it was trained at (a non-square grid cannot be read from the tensor)."""

    file: str
    sha256: str
    grid: tuple[int, int]


SHIPPED: dict[tuple[str, str], ShippedWeights] = {
    ("uit-tiny", "synthetic"): ShippedWeights(
        "uit-tiny-synthetic.safetensors", "58f5236690b2e43a19ca91559eabd9f00e0f62238a67aca0e895fa57492a3175", (8, 4)
    ),
    ("uit-tiny", "synthetic-bag"): ShippedWeights(
        "uit-tiny-synthetic-bag.safetensors", "fe69a56a6e497982e79a2dbdc37faf2369915688087f669bce077e2f0aaa8caa", (8, 4)
    ),
}
"""(architecture, tag) -> the shipped weights (see ``uit-tiny-synthetic.md`` and ``uit-tiny-synthetic-bag.md``
for the cards): ``synthetic`` binds colours to garments zero-shot (98%), ``synthetic-bag`` does not (53%)."""

SHIPPED_TIR_HEADS: dict[tuple[str, str], ShippedWeights] = {
    ("uit-tiny", "synthetic"): ShippedWeights(
        "uit-tiny-synthetic-tir.safetensors", "dd0baebdf1501a16ecde6170eda559283b463a5a72793e45c128759dc0389207", (8, 4)
    ),
}
"""(architecture, tag) -> a TIR decoder pre-trained on the frozen encoders of those shipped weights
(``model.tir_pretrained``), so that a short fine-tune starts with a decoder that reads the caption.
Its `TIRHead` configuration is stored in the file's metadata; see the card beside the CLIP weights."""


CHECK_SPLIT = {"num_ids": 60, "images_per_id": 2, "seed": 5, "num_val_ids": 0, "num_test_ids": 60}
"""``make_synthetic`` arguments of the small fixed split whose zero-shot figures each model card
records and ``tests/test_pretrained.py`` checks (evaluated at the demo config's input size)."""


def shipped_tags(name: str) -> list[str]:
    """The tags shipped for the architecture ``name`` (empty for most open_clip models)."""
    return sorted(tag for arch, tag in SHIPPED if arch == name)


def shipped_weights(name: str, tag: str) -> Path:
    """The verified path of the weights shipped as ``tag`` for ``name``.

    Raises ``ValueError`` naming the file when it is missing or its SHA-256 differs from the record.
    """
    return _verified(SHIPPED[(name, tag)], f"the shipped weights for {name} pretrained={tag!r} are missing")


def shipped_tir_head(name: str, tag: str) -> Path:
    """The verified path of the TIR decoder shipped for ``name`` pretrained=``tag`` (`SHIPPED_TIR_HEADS`).

    Raises ``ValueError`` naming the tags that have one when there is none, or naming the file when it
    is missing or altered.
    """
    if (name, tag) not in SHIPPED_TIR_HEADS:
        have = sorted(t for arch, t in SHIPPED_TIR_HEADS if arch == name)
        raise ValueError(f"no TIR decoder is shipped for {name} pretrained={tag!r}; shipped for: {have}")
    return _verified(SHIPPED_TIR_HEADS[(name, tag)], f"the shipped TIR decoder for {name} pretrained={tag!r} is missing")


def _verified(entry: ShippedWeights, missing: str) -> Path:
    """The path of ``entry``'s file once its SHA-256 is checked; ``missing``: what to say when it is absent."""
    path = SHIPPED_DIR / entry.file
    if not path.is_file():
        raise ValueError(f"{path}: {missing}; reinstall uit_reid")
    digest = file_sha256(path)
    if digest != entry.sha256:
        raise ValueError(
            f"{path}: SHA-256 {digest[:16]}... differs from the shipped {entry.sha256[:16]}...; the file was "
            "changed or damaged, refusing to load it (reinstall uit_reid)"
        )
    return path
