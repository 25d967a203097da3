"""Export a `GalleryIndex` for the ecosystem: a plain FAISS index file plus its ids as parquet.

The layout is clip-retrieval's back end's: ``DIR/image.index`` (``faiss.read_index`` opens it,
memory-mapped with ``faiss.IO_FLAG_MMAP`` if wanted) and ``DIR/metadata/metadata_0.parquet``, whose
rows, in file order, are the FAISS labels: clip-retrieval concatenates the folder's parquet files in
sorted order and reads row ``label`` for each hit. Our labels are slots, so the table has one row per
slot, ``id`` holding the item's id (null for an item removed from the index, which an IVF or flat
index never returns) and, for string ids, the same text as ``image_path`` (the column clip-retrieval
shows). The FAISS bytes are GalleryIndex's own, streamed (nothing copied), with its nprobe /
efSearch stored in them, so plain FAISS answers exactly as `GalleryIndex.search` does.

HNSW graphs cannot delete: an ``hnsw`` index with removed items would return them from plain FAISS,
so its export is refused until it is rebuilt. An index whose IVF lists live in a separate ``.ivfdata``
file (on-disk lists) is exported with that file beside ``image.index``: see `_ONDISK_HOOK`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from uit_reid.io import atomic_write_bytes
from uit_reid.retrieval.index import GalleryIndex

__all__ = ["INDEX_NAME", "METADATA_NAME", "export_index"]

logger = logging.getLogger(__name__)

INDEX_NAME = "image.index"
"""The FAISS file's name in the export folder (clip-retrieval's back end looks for this name)."""
METADATA_NAME = "metadata/metadata_0.parquet"
"""The id table's path in the export folder: one row per FAISS label, in label order."""
_ROWS_PER_GROUP = 1 << 20
_ONDISK_HOOK = None
"""TODO(issue 28 part B): when GalleryIndex gains on-disk IVF lists (``OnDiskInvertedLists``), copy
their ``.ivfdata`` beside ``image.index`` here and write the index with the lists' new file name."""


def export_index(index: GalleryIndex, out: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``index`` to the folder ``out`` as ``image.index`` + ``metadata/metadata_0.parquet``.

    Each file is written atomically. Returns the two paths. ValueError (naming the reason) for an
    empty or memory-mapped index or an HNSW index with removed items.
    """
    if index._index is None:
        raise ValueError("cannot export an empty, untrained index: add features first")
    if index.read_only:
        # FAISS would write the mapped lists as a reference to a list file that does not exist
        raise ValueError("cannot export a memory-mapped index: load it with mmap=False first")
    if index.family == "hnsw" and len(index._ids.dead_slots()):
        raise ValueError(
            f"cannot export this hnsw index: {len(index._ids.dead_slots())} removed items are still in its graph "
            "and plain FAISS would return them; rebuild it without them first"
        )
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"cannot export to {out}: it is a file, not a folder")
    index_path, table_path = out / INDEX_NAME, out / METADATA_NAME
    table_path.parent.mkdir(parents=True, exist_ok=True)

    def write_faiss(fh: Any) -> None:
        faiss.write_index(index._index, faiss.PyCallbackIOWriter(fh.write))

    atomic_write_bytes(index_path, write_faiss)
    atomic_write_bytes(table_path, lambda fh: _write_ids(index, fh))
    logger.info("exported %d items (%d labels) to %s and %s", len(index), index.num_slots, index_path, table_path)
    return index_path, table_path


def _write_ids(index: GalleryIndex, fh: Any) -> None:
    """The id table, one row per slot, a row group at a time (ids are never all in memory as objects)."""
    strings = index.id_type == "str"
    fields = [pa.field("id", pa.string() if strings else pa.int64())]
    if strings:
        fields.append(pa.field("image_path", pa.string()))
    schema = pa.schema(fields)
    total = index.num_slots
    with pq.ParquetWriter(fh, schema) as writer:
        for start in tqdm(range(0, total, _ROWS_PER_GROUP), desc="export ids", unit="group", disable=total < 2**22):
            slots = np.arange(start, min(total, start + _ROWS_PER_GROUP), dtype=np.int64)
            ids = index._ids.ids_at(slots)
            # -1 is never an int id (search uses it for "none"): it marks a removed slot, as None does a string one
            column = pa.array(ids.tolist(), pa.string()) if strings else pa.array(ids, pa.int64(), mask=ids == -1)
            writer.write_table(pa.table([column, column] if strings else [column], schema=schema))
