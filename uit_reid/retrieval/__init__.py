"""Retrieval metrics, the FAISS gallery index and search helpers.

Everything here takes arrays (torch or numpy) and callables, never datasets or models:
`evaluate` scores a similarity matrix, `GalleryIndex` stores gallery features for
cosine search, and the search helpers encode a folder of images and query it with text.
"""

from __future__ import annotations

from uit_reid.retrieval.index import FORMAT_VERSION, GalleryIndex, IndexFormatError, default_nlist
from uit_reid.retrieval.metrics import METRIC_KEYS, binding_accuracy, evaluate, metrics_table, relevant_ranks
from uit_reid.retrieval.search import (
    IMAGE_EXTENSIONS,
    Hit,
    build_index_from_folder,
    encode_image_folder,
    list_images,
    render_results,
    search_text,
)

__all__ = [
    "FORMAT_VERSION",
    "IMAGE_EXTENSIONS",
    "METRIC_KEYS",
    "GalleryIndex",
    "Hit",
    "IndexFormatError",
    "binding_accuracy",
    "build_index_from_folder",
    "default_nlist",
    "encode_image_folder",
    "evaluate",
    "list_images",
    "metrics_table",
    "relevant_ranks",
    "render_results",
    "search_text",
]
