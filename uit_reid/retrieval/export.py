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
so its export is refused until it is rebuilt. An on-disk index (`uit_reid.retrieval.ondisk`: lists in
``OUT.ivfdata``, ids in ``OUT.ids``) is exported as FAISS's own on-disk form, in the folder layout
clip-retrieval's back end reads for a merged index: ``image.index/populated.index`` holds an
``OnDiskInvertedLists`` naming ``image.index/populated.index.ivfdata`` by its absolute path.
``faiss.read_index(path)`` opens it there; ``faiss.IO_FLAG_ONDISK_SAME_DIR`` (what clip-retrieval
passes) looks for the lists beside the index instead, so the folder may be moved. Not
``IO_FLAG_MMAP``: it includes ``IO_FLAG_SKIP_IVF_DATA``, and FAISS 1.15.1 then leaves on-disk lists
unmapped (a search crashes); on-disk lists are memory-mapped anyway. The list file is a hard link
to the index's own when both are on one filesystem (no bytes copied), otherwise a streamed copy;
the log says which. Its layout is already FAISS's, so it is used as is.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from uit_reid.io import atomic_write_bytes
from uit_reid.retrieval.index import GalleryIndex
from uit_reid.retrieval.ondisk import ivf_of

__all__ = ["INDEX_NAME", "LISTS_NAME", "METADATA_NAME", "ONDISK_INDEX_NAME", "export_index"]

logger = logging.getLogger(__name__)

INDEX_NAME = "image.index"
"""The FAISS file's name in the export folder (clip-retrieval's back end looks for this name)."""
METADATA_NAME = "metadata/metadata_0.parquet"
"""The id table's path in the export folder: one row per FAISS label, in label order."""
ONDISK_INDEX_NAME = INDEX_NAME + "/populated.index"
"""The FAISS file's path in the export folder of an on-disk index (clip-retrieval: a folder ``image.index``)."""
LISTS_NAME = ONDISK_INDEX_NAME + ".ivfdata"
"""The on-disk lists' path in the export folder of an on-disk index (``populated.index`` names it)."""
_ROWS_PER_GROUP = 1 << 20
_COPY_CHUNK = 1 << 24


def export_index(index: GalleryIndex, out: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``index`` to the folder ``out`` as ``image.index`` + ``metadata/metadata_0.parquet``.

    An on-disk index is written as ``image.index/populated.index`` + ``.ivfdata`` (module docstring). Each file is written
    atomically, the lists before the index that names them. Returns the index and table paths.
    ValueError (naming the reason) for an empty or memory-mapped index or an HNSW index with
    removed items.
    """
    if index._index is None:
        raise ValueError("cannot export an empty, untrained index: add features first")
    if index.read_only and not index._on_disk:
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
    index_path = out / (ONDISK_INDEX_NAME if index._on_disk else INDEX_NAME)
    table_path = out / METADATA_NAME
    table_path.parent.mkdir(parents=True, exist_ok=True)

    lists = faiss.downcast_InvertedLists(ivf_of(index._index).invlists) if index._on_disk else None
    if lists is not None:
        _link_or_copy(Path(lists.filename), out / LISTS_NAME)

    def write_faiss(fh: Any) -> None:
        if lists is None:
            faiss.write_index(index._index, faiss.PyCallbackIOWriter(fh.write))
            return
        source, lists.filename = lists.filename, str((out / LISTS_NAME).resolve())
        try:  # the file name is all that differs: the serialised table of (size, capacity, offset) holds
            faiss.write_index(index._index, faiss.PyCallbackIOWriter(fh.write))
        finally:
            lists.filename = source

    atomic_write_bytes(index_path, write_faiss)
    atomic_write_bytes(table_path, lambda fh: _write_ids(index, fh))
    logger.info("exported %d items (%d labels) to %s and %s", len(index), index.num_slots, index_path, table_path)
    return index_path, table_path


def _link_or_copy(source: Path, target: Path) -> None:
    """Put ``source``'s bytes at ``target`` atomically: a hard link where the filesystem allows, else a copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and os.path.samefile(source, target):
        logger.info("%s is already %s (a hard link)", target, source)
        return
    tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp"
    try:
        os.link(source, tmp)
    except OSError as err:  # another filesystem (EXDEV), or one without hard links
        logger.info("copying %s to %s (%.2f GB): no hard link possible (%s)", source, target,
                    source.stat().st_size / 1e9, err.strerror)
        with open(source, "rb") as src:
            atomic_write_bytes(target, lambda fh: shutil.copyfileobj(src, fh, _COPY_CHUNK))
        return
    try:
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    logger.info("linked %s to %s (a hard link: no bytes copied)", target, source)


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
