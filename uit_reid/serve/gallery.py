"""The gallery's images as the service sees them: numbered items, cached thumbnails.

Clients name an image by its number (its position in the index), never by a path: the number is
checked against the index and mapped to the path stored there, so nothing from a request reaches the
file system. Thumbnails are JPEG bytes kept in a bounded LRU cache. A full answer is at most ``max_side``
pixels on its longest side, and an image of more than ``max_side``² pixels is never decoded: its size
is read from the file's header and the request refused (`ImageTooLarge`, a 413), so a small PNG that
claims 12000² pixels costs nothing.
"""

from __future__ import annotations

import io
import os
import re
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image

from uit_reid._errors import CorruptImageError
from uit_reid.images import load_image
from uit_reid.retrieval import GalleryIndex

__all__ = ["DEFAULT_MAX_SIDE", "GalleryImages", "ImageTooLarge", "UnknownImage"]

DEFAULT_MAX_SIDE = 4096
"""The longest side of a full image answer; images of more than its square in pixels are not decoded."""

_NUMBER = re.compile(r"[0-9]{1,12}")


class UnknownImage(LookupError):
    """The requested image is not in the gallery (or has no file)."""


class ImageTooLarge(ValueError):
    """The requested image has more pixels than the service decodes (``max_side``²)."""


class GalleryImages:
    """Numbered gallery items with their files and a thumbnail cache.

    Args:
        index: the gallery index; an item's number is its position in ``index.ids()`` order, and its
            path is read from the index on request (`GalleryIndex.ids_at`), so no id list is held.
        base: folder that relative path ids are taken from (the index file's folder).
        thumb_size: the thumbnail's bounding box, (height, width); the aspect ratio is kept.
        cache_size: most thumbnails kept in memory.
        max_side: the longest side of a full answer (larger images are scaled down to it); images of
            more than ``max_side``² pixels are refused before decoding.
    """

    def __init__(
        self,
        index: GalleryIndex,
        base: str | os.PathLike[str],
        *,
        thumb_size: tuple[int, int] = (256, 128),
        cache_size: int = 4096,
        max_side: int = DEFAULT_MAX_SIDE,
    ) -> None:
        if thumb_size[0] < 8 or thumb_size[1] < 8:
            raise ValueError(f"thumb_size must be at least 8x8 (height, width), got {thumb_size}")
        if max_side < max(thumb_size):
            raise ValueError(f"max_side must be at least the thumbnail's longest side {max(thumb_size)}, got {max_side}")
        self.max_side = int(max_side)
        self.index = index
        self.base = Path(base)
        self.thumb_size = (int(thumb_size[0]), int(thumb_size[1]))
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self.index)

    def path(self, key: str) -> Path:
        """The file of item ``key`` (its number as text); `UnknownImage` if there is none."""
        if not _NUMBER.fullmatch(key) or int(key) >= len(self.index):
            raise UnknownImage(f"unknown image id {key!r}: ids are the numbers 0..{len(self.index) - 1} of this gallery")
        id_ = self.index.ids_at(np.array([int(key)]))[0]
        if not isinstance(id_, str):
            raise UnknownImage(f"image {key} has no file: this index stores numeric ids, not image paths")
        path = Path(id_)
        return path if path.is_absolute() else self.base / path

    def _open(self, key: str, target_size: tuple[int, int]) -> Image.Image:
        """Item ``key`` decoded for an answer of ``target_size`` (JPEGs are reduced while decoding);
        `ImageTooLarge` before decoding when its header claims more than ``max_side``² pixels."""
        path = self.path(key)
        limit = f"the service decodes images of at most {self.max_side}x{self.max_side} ({self.max_side**2} pixels)"
        try:
            with Image.open(path) as im:  # reads the header only
                width, height = im.size
        except Image.DecompressionBombError as err:
            raise ImageTooLarge(f"image {key} has more pixels than PIL decodes safely: {limit}") from err
        except OSError as err:
            raise UnknownImage(f"image {key} cannot be read from the gallery: {type(err).__name__}") from err
        if width * height > self.max_side**2:
            raise ImageTooLarge(f"image {key} is {width}x{height} pixels: {limit}")
        try:
            return load_image(path, target_size=target_size)
        except (OSError, ValueError, CorruptImageError) as err:
            raise UnknownImage(f"image {key} cannot be read from the gallery: {type(err).__name__}") from err

    def thumbnail(self, key: str) -> bytes:
        """JPEG thumbnail of item ``key``, from the cache when it is there."""
        n = int(key) if _NUMBER.fullmatch(key) else -1
        with self._lock:
            data = self._cache.get(n)
            if data is not None:
                self._cache.move_to_end(n)
                self.hits += 1
                return data
        img = self._open(key, self.thumb_size)
        img.thumbnail((self.thumb_size[1], self.thumb_size[0]))
        buffer = io.BytesIO()
        img.save(buffer, format="JPEG", quality=85)
        data = buffer.getvalue()
        with self._lock:
            self.misses += 1
            self._cache[n] = data
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return data

    def full(self, key: str) -> bytes:
        """The whole image of item ``key`` re-encoded as PNG (only image data ever leaves the server),
        scaled down to ``max_side`` on its longest side if larger."""
        half = self.max_side // 2  # load_image keeps at least twice its target: max_side, then thumbnail
        img = self._open(key, (half, half))
        img.thumbnail((self.max_side, self.max_side))
        buffer = io.BytesIO()
        img.save(buffer, format="PNG")
        return buffer.getvalue()
