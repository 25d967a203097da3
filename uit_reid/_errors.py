"""Error types shared across subpackages without importing them (no torch, no PIL).

`uit_reid.data.records` re-exports the data errors; they live here so that `uit_reid.images` (used by
`uit_reid.retrieval` as well as `uit_reid.data`) can raise them without importing the data package.
"""

from __future__ import annotations


class DataError(Exception):
    """Base class of every error raised by `uit_reid.data` for bad input."""


class CorruptImageError(DataError, OSError):
    """An image file exists but cannot be decoded, or is too large to decode safely (its path is named)."""


class EncoderMismatchError(ValueError):
    """Features or an index of one encoder met another encoder (their fingerprints differ).

    A ``ValueError`` subclass, so callers that catch ``ValueError`` keep working; callers that must
    tell this case apart (the service) catch it by type.
    """


def missing_extra(what: str, extra: str, packages: str) -> ImportError:
    """The error for an optional dependency that is not installed: ``what`` needs the ``extra`` extra.

    Every such message names an extra that ``pyproject.toml`` declares (a test reads them all), and
    ``packages`` says what the extra brings.
    """
    return ImportError(f"{what} needs the {extra} extra: pip install 'uit_reid[{extra}]' ({packages})")
