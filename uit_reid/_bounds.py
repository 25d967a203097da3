"""Sizes read from files someone else wrote (``config.json``, a checkpoint's shapes, ``configs.yaml``),
checked before anything is allocated.

A 1 KB ``config.json`` can declare a model of hundreds of gigabytes; building it would allocate
all of that before the weights are even opened. So every size is checked against a sane range,
and the parameters the sizes imply are checked against the bytes of the weights that are meant to
fill them (`check_weights_hold`). Errors are ``ValueError`` with one line naming the file and field.
"""

from __future__ import annotations

import math
import operator
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from uit_reid import recipe

__all__ = ["MAX_SIZES", "check_image_size", "check_int", "check_model_cfg", "check_number", "check_torch_zip",
           "check_weights_hold", "clip_parameter_count"]

# far beyond any CLIP that exists (ViT-bigG: width 1664, 48 layers), far below what breaks a machine
MAX_SIZES = {
    "width": 16_384, "layers": 256, "heads": 1_024, "embed_dim": 16_384, "patch_size": 1_024,
    "image_side": 8_192, "context_length": 4_096, "vocab_size": 1_048_576, "num_classes": 10_000_000,
    "mlp_ratio": 64,
}


def check_int(value: Any, field: str, low: int, high: int) -> int:
    """``value`` as an int from ``low`` to ``high``; ValueError naming ``field`` otherwise (bools and 64.5 too)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)  # ints and numpy integers; not 64.5, "64" or True
    except TypeError:
        raise ValueError(f"{field}: must be an integer from {low} to {high}, got {value!r}") from None
    if not low <= value <= high:
        raise ValueError(f"{field}: must be from {low} to {high}, got {value}")
    return value


def check_number(value: Any, field: str, low: float, high: float = math.inf, *, low_open: bool = False,
                 high_open: bool = False) -> float:
    """``value`` as a finite float in the range (open ends where asked); ValueError naming ``field``."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        span = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{field}: must be a finite number in {span}, got {value!r}")
    return float(value)


def check_image_size(value: Any, field: str = "image_size") -> tuple[int, int]:
    """A (height, width) pair of whole pixel counts from 1 to ``MAX_SIZES['image_side']``."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or len(value) != 2:
        raise ValueError(f"{field}: must be (height, width), two integers, got {value!r}")
    side = MAX_SIZES["image_side"]
    return check_int(value[0], f"{field}[0]", 1, side), check_int(value[1], f"{field}[1]", 1, side)


def _section(cfg: Mapping[str, Any], key: str, field: str) -> Mapping[str, Any]:
    section = cfg.get(key, {})
    if not isinstance(section, Mapping):
        raise ValueError(f"{field}.{key}: must be an object, got {type(section).__name__}")
    return section


def check_model_cfg(cfg: Any, field: str = "model_cfg") -> None:
    """Every size of an open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``) in range."""
    if not isinstance(cfg, Mapping):
        raise ValueError(f"{field}: must be an object, got {type(cfg).__name__}")
    m = MAX_SIZES
    check_int(cfg.get("embed_dim"), f"{field}.embed_dim", 1, m["embed_dim"])
    vision, text = _section(cfg, "vision_cfg", field), _section(cfg, "text_cfg", field)
    if "image_size" in vision:
        size = vision["image_size"]
        if isinstance(size, int) and not isinstance(size, bool):
            size = (size, size)
        check_image_size(size, f"{field}.vision_cfg.image_size")
    for section, name, keys in ((vision, "vision_cfg", ("width", "layers", "patch_size", "head_width")),
                                (text, "text_cfg", ("width", "layers", "heads", "context_length", "vocab_size"))):
        for key in keys:
            if key in section:
                limit = m.get(key, m["width"] if key == "head_width" else m["layers"])
                check_int(section[key], f"{field}.{name}.{key}", 1, limit)
        if "mlp_ratio" in section:
            check_number(section["mlp_ratio"], f"{field}.{name}.mlp_ratio", 0, m["mlp_ratio"], low_open=True)


def clip_parameter_count(cfg: Mapping[str, Any]) -> int:
    """About how many parameters an open_clip CLIP of config ``cfg`` has (checked by `check_model_cfg`).

    Transformer blocks (attention 4 w^2 + MLP 2 r w^2), patch embedding, position tables, token
    table and projections; open_clip's defaults stand in for missing keys. Within a few percent.
    """
    embed = int(cfg.get("embed_dim", 512))
    vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    vw, vl, patch = int(vision.get("width", 768)), int(vision.get("layers", 12)), int(vision.get("patch_size", 16))
    size = vision.get("image_size", 224)
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    vr = float(vision.get("mlp_ratio", 4.0))
    tw, tl, tr = int(text.get("width", 512)), int(text.get("layers", 12)), float(text.get("mlp_ratio", 4.0))
    grid = (h // patch) * (w // patch)
    vision_params = vl * int((4 + 2 * vr) * vw * vw) + 3 * patch * patch * vw + (grid + 1) * vw + vw * embed
    text_params = (tl * int((4 + 2 * tr) * tw * tw) + int(text.get("vocab_size", 49408)) * tw
                   + int(text.get("context_length", recipe.CONTEXT_LENGTH)) * tw + tw * embed)
    return vision_params + text_params


def check_weights_hold(parameters: int, weights: str | os.PathLike[str], field: str) -> None:
    """Refuse sizes that need more parameters than ``weights`` can hold (2 bytes each, half precision).

    Run before building the model, so a small file that declares a huge model costs nothing.
    """
    path = Path(weights)
    size = path.stat().st_size
    if parameters * 2 > size + (1 << 20):
        raise ValueError(
            f"{field}: its sizes declare about {parameters:,} parameters ({parameters * 2 / 2**30:.1f} GiB even "
            f"in half precision), but {path} has only {size:,} bytes; refusing to build it")


def check_torch_zip(path: str | os.PathLike[str], slack: int = 16 << 20) -> None:
    """Refuse a torch zip file whose entries would inflate to far more than the file's own size.

    ``torch.save`` stores tensors uncompressed, so a real checkpoint inflates to about its size; a
    1 MB file that declares 1 GiB is a zip bomb. Read from the zip's directory, before inflating.
    Files that are not zips are left to the loader.
    """
    import zipfile

    path = Path(path)
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            inflated = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return
    if inflated > 4 * size + slack:
        raise ValueError(f"{path}: its zip entries declare {inflated:,} bytes once inflated, "
                         f"{inflated / max(size, 1):,.0f}x the file's {size:,}; refusing to inflate it (a zip bomb?)")
