"""On-disk IVF indexes: the inverted lists in a ``.ivfdata`` file and the ids in an ``.ids`` file beside the index.

An on-disk index is three files::

    gallery.index            the GalleryIndex file (`uit_reid.retrieval.index_file`): header and the
                             *trained, empty* FAISS index (quantizer, PQ / OPQ tables); its header's
                             ``ondisk`` field names the other two files and holds every list's length
    gallery.index.ivfdata    the lists, in list order: list ``l`` is its codes (``size * code_size``
                             bytes) then its labels (``size`` int64), back to back (FAISS's
                             ``OnDiskInvertedLists`` layout, capacity = size)
    gallery.index.ids        the id map (`uit_reid.retrieval.idmap.write_ids_file`)

Loading maps the lists with FAISS's ``OnDiskInvertedLists`` (read-only) and the ids with
`IdMap.open_file`: start-up reads the header and the quantizer, neither the lists nor the ids, and
resident memory grows only with the pages a search touches (the page cache can drop them again).
The side files are written first and the index file last, each atomically, so the index file's
presence means the other two are complete. `uit_reid.retrieval.distributed_build` writes them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import faiss
import numpy as np
from tqdm.auto import tqdm

from uit_reid.io import atomic_write_bytes
from uit_reid.retrieval.idmap import IdMap, IdMapError

__all__ = ["ONDISK_FIELD", "attach_lists", "emptied", "ivf_of", "list_starts", "open_ondisk", "side_files",
           "write_lists"]

logger = logging.getLogger(__name__)

ONDISK_FIELD = "ondisk"
"""The index header's field that makes an index file on-disk: ``{"ivfdata", "ids", "vectors", "list_sizes"}``."""


def side_files(path: Path) -> tuple[Path, Path]:
    """The ``.ivfdata`` and ``.ids`` files beside the index file ``path``."""
    return path.with_name(path.name + ".ivfdata"), path.with_name(path.name + ".ids")


def ivf_of(index: Any) -> Any:
    """The IVF index inside ``index`` (itself, or the one behind an OPQ transform), downcast."""
    return faiss.downcast_index(faiss.extract_index_ivf(index))


@contextlib.contextmanager
def emptied(index: Any) -> Iterator[Any]:
    """``index`` with its lists swapped for empty ones for the block (to serialise or compare its trained
    state without its entries); the lists are put back afterwards."""
    ivf = ivf_of(index)
    lists, owned, totals = ivf.invlists, ivf.own_invlists, (index.ntotal, ivf.ntotal)
    empty = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    ivf.own_invlists = False  # replace_invlists would otherwise free the lists we put back
    ivf.replace_invlists(empty, False)
    index.ntotal = ivf.ntotal = 0
    try:
        yield index
    finally:
        ivf.replace_invlists(lists, owned)
        index.ntotal, ivf.ntotal = totals
        del empty


def write_lists(
    path: Path, nlist: int, code_size: int, entries: Callable[[int], tuple[np.ndarray, np.ndarray]], *,
    progress: bool = True,
) -> list[int]:
    """Write the ``.ivfdata`` file ``path`` (module docstring) atomically, one list at a time; returns each
    list's length. ``entries(l)`` gives list ``l``'s codes (uint8, (n, code_size)) and int64 labels, in order."""
    sizes: list[int] = []

    def body(fh: BinaryIO) -> None:
        for list_no in tqdm(range(nlist), desc="writing lists", unit="list", disable=not progress):
            codes, labels = entries(list_no)
            if codes.shape != (labels.size, code_size):
                raise ValueError(f"list {list_no}: {labels.size} labels for codes of shape {codes.shape}")
            fh.write(np.ascontiguousarray(codes, np.uint8).tobytes())
            fh.write(np.ascontiguousarray(labels, "<i8").tobytes())
            sizes.append(int(labels.size))

    atomic_write_bytes(path, b"", body)
    return sizes


def list_starts(sizes: np.ndarray, code_size: int) -> np.ndarray:
    """Byte offset of each list in an ``.ivfdata`` file of lists with ``sizes`` entries, and its total size
    last (uint64, ``len(sizes) + 1`` values): list ``l`` is ``sizes[l]`` codes then as many int64 labels."""
    ends = np.cumsum(np.asarray(sizes, np.uint64) * np.uint64(code_size + 8), dtype=np.uint64)
    return np.concatenate([np.zeros(1, np.uint64), ends])


def attach_lists(index: Any, ivfdata: Path, sizes: np.ndarray) -> None:
    """Give ``index`` (trained, empty) the lists of ``ivfdata``, memory-mapped read-only, with ``sizes`` entries each."""
    ivf = ivf_of(index)
    code_size = int(ivf.code_size)
    starts = list_starts(sizes, code_size)
    table = np.empty((sizes.size, 3), np.uint64)  # OnDiskOneList: size, capacity, offset
    table[:, 0] = table[:, 1] = sizes.astype(np.uint64)
    table[:, 2] = starts[:-1]
    lists = faiss.OnDiskInvertedLists(ivf.nlist, code_size, str(ivfdata))
    faiss.memcpy(lists.lists.data(), faiss.swig_ptr(table), table.nbytes)
    lists.totsize = int(starts[-1])
    lists.read_only = True
    if lists.totsize:
        lists.do_mmap()
    ivf.replace_invlists(lists, True)
    lists.this.disown()  # the IVF index owns (and frees) the lists now
    index.ntotal = ivf.ntotal = int(sizes.sum())


def open_ondisk(path: Path, meta: dict[str, Any], index: Any) -> IdMap:
    """Attach the lists of the on-disk index file ``path`` (header ``meta``, trained empty ``index``) and
    open its ids; raises ``ValueError`` naming what is wrong (the caller names the file)."""
    spec = meta[ONDISK_FIELD]
    if not isinstance(spec, dict) or not all(isinstance(spec.get(k), str) for k in ("ivfdata", "ids")) \
            or not isinstance(spec.get("list_sizes"), list) or not isinstance(spec.get("vectors"), int):
        raise ValueError(f"its {ONDISK_FIELD!r} header field lacks ivfdata, ids, vectors or list_sizes")
    ivfdata, ids_path = path.with_name(spec["ivfdata"]), path.with_name(spec["ids"])
    if Path(spec["ivfdata"]).name != spec["ivfdata"] or Path(spec["ids"]).name != spec["ids"]:
        raise ValueError("its side files must be named without a folder (they live beside the index)")
    ivf = ivf_of(index)
    sizes = spec["list_sizes"]
    if len(sizes) != ivf.nlist or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in sizes):
        raise ValueError(f"its list_sizes are not {ivf.nlist} non-negative integers")
    sizes_array = np.asarray(sizes, np.int64)
    total = int(sizes_array.sum())
    expected = total * (ivf.code_size + 8)
    if not ivfdata.is_file():
        raise FileNotFoundError(f"no list file at {ivfdata} (an on-disk index keeps its lists beside it)")
    if ivfdata.stat().st_size != expected or total != spec["vectors"]:
        raise ValueError(f"{ivfdata} holds {ivfdata.stat().st_size} bytes, its {total} vectors need {expected} "
                         "(truncated, or from another build)")
    try:
        ids = IdMap.open_file(ids_path)
    except IdMapError as err:
        raise ValueError(str(err)) from None
    if ids.num_slots != total:
        raise ValueError(f"{ids_path} holds {ids.num_slots} ids for {total} vectors (from another build?)")
    attach_lists(index, ivfdata, sizes_array)
    logger.info("mapped %d vectors' lists from %s and their ids from %s", total, ivfdata, ids_path)
    return ids
