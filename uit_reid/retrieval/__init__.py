"""Retrieval metrics, the FAISS gallery index and search helpers.

Everything here takes arrays (torch or numpy) and callables, never datasets or models:
`evaluate` scores a similarity matrix, `GalleryIndex` stores gallery features for
cosine search, the search helpers encode a folder of images and query it with text, and the
embedding-shard modules encode galleries to files and build compressed indexes from them.
"""

from __future__ import annotations

from uit_reid._errors import EncoderMismatchError
from uit_reid.retrieval.budget import budget_nlist, choose_kind, coarse_quantizer, index_memory, parse_bytes
from uit_reid.retrieval.export import export_index
from uit_reid.retrieval.factory_string import parse_factory
from uit_reid.retrieval.index import (
    FORMAT_VERSION,
    KIND_ALIASES,
    GalleryIndex,
    IndexFormatError,
    default_nlist,
)
from uit_reid.retrieval.metrics import binding_accuracy, evaluate, relevant_ranks
from uit_reid.retrieval.search import (
    IMAGE_EXTENSIONS,
    Hit,
    build_index_from_folder,
    encode_image_files,
    encode_image_folder,
    list_images,
    ranked_hits,
    render_results,
    search_text,
)
from uit_reid.retrieval.shards import EmbeddingShards, ShardFormatError, encode_shards, read_image_list
from uit_reid.retrieval.streaming import ShardVectors, add_shards, build_index_from_shards
from uit_reid.tables import METRIC_KEYS, metrics_table

__all__ = [
    "FORMAT_VERSION",
    "IMAGE_EXTENSIONS",
    "KIND_ALIASES",
    "METRIC_KEYS",
    "EmbeddingShards",
    "EncoderMismatchError",
    "GalleryIndex",
    "Hit",
    "IndexFormatError",
    "ShardFormatError",
    "ShardVectors",
    "add_shards",
    "binding_accuracy",
    "build_index_from_folder",
    "build_index_from_shards",
    "budget_nlist",
    "choose_kind",
    "coarse_quantizer",
    "default_nlist",
    "encode_image_files",
    "encode_image_folder",
    "encode_shards",
    "index_memory",
    "evaluate",
    "export_index",
    "list_images",
    "metrics_table",
    "parse_bytes",
    "parse_factory",
    "ranked_hits",
    "read_image_list",
    "relevant_ranks",
    "render_results",
    "search_text",
]
