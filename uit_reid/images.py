"""The library's one image loader: any file PIL reads, as an upright 8-bit RGB image, or a clear error.

Training, evaluation, folder indexing, dataset verification and result grids all decode images
here, so they agree on what a file looks like:

- EXIF orientation is applied (a phone photo stored on its side loads upright).
- 16-bit greyscale (PNG, TIFF) is scaled to 8 bits, not clipped (50% grey stays 50% grey).
- Transparency (RGBA, LA, palette or greyscale with a transparent colour) is composited over
  `BACKGROUND`, the CLIP mean colour, so transparent pixels become neutral input after
  normalisation instead of whatever colour the file stored under them.
- CMYK, palette, 1-bit and YCbCr images are converted to RGB.
- Images over PIL's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS`` x 2 pixels) raise
  `CorruptImageError` naming the file before any pixel is decoded; skip modes skip them like any
  undecodable file.
- With ``target_size``, large legal images cost less: JPEGs decode at a reduced DCT scale
  (``Image.draft``) and other formats are reduced by an integer factor right after decoding (1-bit
  and palette images too, before they become RGB), never below twice ``target_size`` (so images of ordinary sizes are left exactly as they were and
  the caller's resize still does the final, antialiased step).

This module imports PIL and numpy only (no torch), so `uit_reid.retrieval` can use it.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image

from uit_reid._errors import CorruptImageError

__all__ = ["BACKGROUND", "CLIP_MEAN", "CLIP_STD", "INTERPOLATIONS", "CorruptImageError", "load_image", "to_rgb"]

logger = logging.getLogger(__name__)

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
"""Per-channel mean of CLIP's image normalisation (the transforms and the model's TIR grayscale use it)."""
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
"""Per-channel standard deviation of CLIP's image normalisation."""

INTERPOLATIONS: dict[str, Image.Resampling] = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
"""Resize filters by name (``data.interpolation``, `UITModel.interpolation`, the transforms of
`uit_reid.augment`): the authors' code resizes bilinearly, open_clip bicubically."""

BACKGROUND: tuple[int, int, int] = (123, 117, 104)
"""RGB colour transparent pixels are composited over: CLIP's channel mean x 255 (zero after normalising)."""

_EXIF_ORIENTATION = 0x0112
_SWAPS_AXES = (5, 6, 7, 8)  # orientations that rotate by 90 or 270 degrees
_REDUCIBLE = ("L", "LA", "RGB", "RGBA", "I", "F", "CMYK", "I;16", "I;16B", "I;16L", "I;16N")
_INDEXED = ("1", "P", "PA")  # reduced by taking pixels, not averaging them


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # a broken EXIF block is not a broken image: ignore it
        return 1


def _stored_target(target_size: Sequence[int] | None, orientation: int) -> tuple[int, int] | None:
    """``target_size`` (height, width) as (width, height) in the file's stored orientation."""
    if target_size is None:
        return None
    h, w = (int(v) for v in target_size)
    if h < 1 or w < 1:
        raise ValueError(f"target_size must be positive (height, width), got {tuple(target_size)}")
    h, w = 2 * h, 2 * w  # keep twice the target: the caller's resize still antialiases as it would
    return (h, w) if orientation in _SWAPS_AXES else (w, h)


def _reduce(im: Image.Image, target: tuple[int, int] | None) -> Image.Image:
    """Reduce by the largest integer factor that keeps both sides at least ``target`` (w, h).

    A box filter where the mode has one; 1-bit and palette images (whose values are not
    intensities) take every factor-th pixel, before they are expanded to RGB at 3 bytes a pixel.
    """
    if target is None or im.mode not in (*_REDUCIBLE, *_INDEXED):
        return im
    factor = min(im.width // target[0], im.height // target[1])
    if factor < 2:
        return im
    if im.mode in _INDEXED:
        return im.resize((im.width // factor, im.height // factor), Image.Resampling.NEAREST)
    return im.reduce(factor)


def _sixteen_to_eight(im: Image.Image) -> Image.Image:
    """Greyscale with more than 8 bits ("I;16*", "I", "F") as 8-bit "L", scaled rather than clipped."""
    arr = np.asarray(im)
    if im.mode.startswith("I;16") or (im.mode == "I" and (im.format == "PNG" or arr.max(initial=0) > 255)):
        out = np.clip(arr.astype(np.int64), 0, 65535) >> 8
    elif im.mode == "F" and arr.size and float(np.nanmax(arr)) <= 1.0:
        out = np.nan_to_num(arr) * 255.0 + 0.5
    else:
        out = arr
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8), mode="L")


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode as RGB: 16-bit scaled, transparency composited over `BACKGROUND`.

    The one RGB conversion of the package: `load_image` and the transforms of `uit_reid.augment` use it.
    """
    if im.mode == "RGB" and "transparency" not in im.info:
        return im
    if im.mode.startswith("I") or im.mode == "F":
        return _sixteen_to_eight(im).convert("RGB")
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if not has_alpha:
        return im.convert("RGB")
    rgba = im.convert("RGBA")
    out = Image.new("RGB", rgba.size, BACKGROUND)
    out.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
    return out


def load_image(path: str | os.PathLike[str], target_size: Sequence[int] | None = None) -> Image.Image:
    """Decode the image at ``path`` as an upright 8-bit RGB image (see the module docstring).

    ``target_size`` (height, width) is the smallest size the caller will use (e.g. the model's input
    size): large files are then decoded or reduced to no less than twice it, which is faster and uses far
    less memory; ``None`` decodes at full size. A missing file raises ``FileNotFoundError``; any other
    failure (not an image, truncated, too many pixels) raises `CorruptImageError` naming the file.
    """
    try:
        with warnings.catch_warnings():
            # PIL warns between MAX_IMAGE_PIXELS and twice that; target_size keeps such images cheap
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                orientation = _orientation(im)
                target = _stored_target(target_size, orientation)
                if target is not None:
                    im.draft("RGB", target)  # JPEG only: decode at 1/2, 1/4 or 1/8 scale when large
                im.load()
                image = to_rgb(_reduce(im, target))
        return _transpose(image, orientation)
    except FileNotFoundError:
        raise
    except Image.DecompressionBombError as e:
        raise CorruptImageError(f"refusing image {path}: too many pixels to decode safely ({e})") from e
    except (OSError, SyntaxError, ValueError, EOFError, TypeError, MemoryError) as e:
        raise CorruptImageError(f"cannot decode image {path}: {e}") from e


_TRANSPOSE = {
    2: (Image.Transpose.FLIP_LEFT_RIGHT,),
    3: (Image.Transpose.ROTATE_180,),
    4: (Image.Transpose.FLIP_TOP_BOTTOM,),
    5: (Image.Transpose.TRANSPOSE,),
    6: (Image.Transpose.ROTATE_270,),
    7: (Image.Transpose.TRANSVERSE,),
    8: (Image.Transpose.ROTATE_90,),
}


def _transpose(image: Image.Image, orientation: int) -> Image.Image:
    """Apply an EXIF orientation (the same table as ``ImageOps.exif_transpose``)."""
    for op in _TRANSPOSE.get(orientation, ()):
        image = image.transpose(op)
    return image
