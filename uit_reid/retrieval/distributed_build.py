"""An IVF index built by any number of ranks into parts, then merged on disk into one on-disk index.

`build_ondisk_index` is what ``uit-reid index build --on-disk`` runs on every torchrun rank:

1. rank 0 trains the quantizer on the seeded sample `trained_index` draws (the one a single-process
   build draws) and writes it atomically to ``OUT.parts/trained.index``; after a barrier every rank
   reads it;
2. rank ``r`` of ``w`` adds the shards ``n % w == r`` (the split ``encode`` uses) into parts of at most
   ``part_vectors`` vectors (so its memory does not grow with its share), each held in memory, then
   written as an on-disk index ``part-R-of-W-K.index`` (with its ``.ivfdata`` and ``.ids``) and its
   completion record ``part-R-of-W-K.json``;
3. after a barrier rank 0 merges the parts (`merge_parts`) into the on-disk index ``OUT``
   (`uit_reid.retrieval.ondisk`) and removes ``OUT.parts``.

A part's slots are the global rows of its vectors in the embedding folder (recorded as runs in its
metadata), and every merged list is ordered by that row, so any world size writes the same files.
A rerun keeps the parts that have a completion record for the same rows and rebuilds the others (a
killed rank's unfinished part).

`merge_parts` also merges parts built on separate machines (``uit-reid index merge``): they must
share one trained state (one ``trained.index``, say) and hold distinct ids.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from uit_reid.io import atomic_write_text, remove_stale_temp_files
from uit_reid.retrieval.budget import PART_MEMORY
from uit_reid.retrieval.budget import part_vectors as budget_part_vectors
from uit_reid.retrieval.idmap import IdMap, IdMapError, write_ids_file
from uit_reid.retrieval.index import GalleryIndex
from uit_reid.retrieval.index_file import write_index_file
from uit_reid.retrieval.ondisk import ONDISK_FIELD, emptied, ivf_of, list_starts, side_files, write_lists
from uit_reid.retrieval.shards import EmbeddingShards
from uit_reid.retrieval.streaming import add_shard_rows, trained_index

__all__ = ["PART_RUNS", "build_ondisk_index", "merge_indexes", "merge_parts", "parts_folder"]

logger = logging.getLogger(__name__)

PART_RUNS = "part_runs"
"""A part's metadata key: ``[[first global slot, count], ...]`` for its slots in order."""
_PLAN = "plan.json"
_TRAINED = "trained.index"


def parts_folder(out: Path) -> Path:
    """Where the ranks of a build into ``out`` keep the trained quantizer and their parts."""
    return out.with_name(out.name + ".parts")


def build_ondisk_index(
    shards: EmbeddingShards,
    kind: str,
    out: Path,
    *,
    train_size: int | None = None,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    barrier: Callable[[], None] = lambda: None,
    metadata: dict[str, Any] | None = None,
    part_memory: int = PART_MEMORY,
    part_vectors: int | None = None,
    progress: bool = True,
) -> None:
    """Build the on-disk index ``out`` over ``shards`` on this rank of ``world_size`` (module docstring).

    ``barrier`` synchronises the ranks (``torch.distributed.barrier`` under torchrun). Only rank 0
    writes ``out``; ``metadata`` is recorded in it. A rank writes a part to disk whenever it holds
    ``part_vectors`` vectors (default: `uit_reid.retrieval.budget.part_vectors` of the kind under
    ``part_memory`` bytes), so its memory does not grow with its share of the gallery.
    """
    if GalleryIndex(max(shards.dim, 1), kind).family != "ivf":
        raise ValueError(f"an on-disk index needs an IVF kind (ivf, IVF<n>,Flat, IVF<n>,PQ<m>, ...), got {kind!r}")
    if part_vectors is not None and part_vectors < 1:
        raise ValueError(f"part_vectors must be positive, got {part_vectors}")
    work = parts_folder(out)
    plan = {"kind": kind, "train_size": train_size, "seed": seed, "embeddings": str(shards.folder.resolve()),
            "vectors": len(shards), "shards": shards.num_shards, "fingerprint": shards.fingerprint}

    def plans() -> list[list[list[tuple[int, int, int]]]]:
        factory = GalleryIndex.load(work / _TRAINED).factory
        size = part_vectors or budget_part_vectors(factory, shards.dim, part_memory)
        return [_pieces(shards.rows, r, world_size, size) for r in range(world_size)]

    if rank == 0:
        _start(work, plan)
        if not (work / _TRAINED).is_file():
            trained_index(shards, kind, train_size=train_size, seed=seed).save(work / _TRAINED)
        every = plans()
        _drop_stale_parts(work, {_part_path(work, r, world_size, k).stem for r in range(world_size)
                                 for k in range(len(every[r]))})
    barrier()  # the quantizer is shared and stale parts are gone before any rank writes a part
    if rank:
        every = plans()
    for k, piece in enumerate(every[rank]):
        part = _part_path(work, rank, world_size, k)
        record = part.with_suffix(".json")
        what = f"rank {rank}/{world_size}: part {k + 1}/{len(every[rank])}"
        if _complete(record, piece):
            logger.info("%s %s is complete, kept", what, part)
            continue
        index = GalleryIndex.load(work / _TRAINED)
        add_shard_rows(index, shards, piece, progress=progress)
        runs = [[int(shards.offsets[n]) + a, b - a] for n, a, b in piece]
        # the part is on disk too, so the merge maps its lists and ids instead of reading them
        merge_indexes([index], [part], part, metadata={PART_RUNS: runs}, progress=False)
        vectors = len(index)
        del index  # its lists and ids are on disk now: the next part starts from the trained state again
        atomic_write_text(record, json.dumps({"rank": rank, "world_size": world_size, "rows": [list(r) for r in piece],
                                              "vectors": vectors}))
        logger.info("%s: %d vectors of %d shards -> %s", what, vectors, len({n for n, _, _ in piece}), part)
    barrier()
    if rank == 0:
        parts = [_part_path(work, r, world_size, k) for r in range(world_size) for k in range(len(every[r]))]
        entry = {"folder": plan["embeddings"], "first_slot": 0, "rows": len(shards)}
        merge_parts(parts, out, metadata={**(metadata or {}), "embeddings": [entry]}, progress=progress)
        shutil.rmtree(work)


def _part_path(work: Path, rank: int, world_size: int, piece: int) -> Path:
    return work / f"part-{rank:05d}-of-{world_size:05d}-{piece:05d}.index"


def _pieces(rows: Sequence[int], rank: int, world_size: int, size: int) -> list[list[tuple[int, int, int]]]:
    """The parts rank ``rank`` of ``world_size`` builds: its shards (``n % world_size == rank``, the split
    ``encode`` uses) in order, cut into runs of rows ``(shard, begin, end)`` of ``size`` rows a part
    (a shard may straddle two parts)."""
    pieces: list[list[tuple[int, int, int]]] = []
    current: list[tuple[int, int, int]] = []
    held = 0
    for n in range(rank, len(rows), world_size):
        begin = 0
        while begin < rows[n]:
            take = min(rows[n] - begin, size - held)
            current.append((n, begin, begin + take))
            held, begin = held + take, begin + take
            if held == size:
                pieces.append(current)
                current, held = [], 0
    if current:
        pieces.append(current)
    return pieces


def _complete(record: Path, piece: list[tuple[int, int, int]]) -> bool:
    """Whether ``record`` says its part holds exactly the rows of ``piece`` (a part of another split is rebuilt)."""
    try:
        done = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(done, dict) and done.get("rows") == [list(r) for r in piece]


def _start(work: Path, plan: dict[str, Any]) -> None:
    """Write the plan of a new build into ``work``, or check that ``work`` holds this very build (resume)."""
    path = work / _PLAN
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path} cannot be read as JSON: {err}; delete {work} to start over") from None
        for key, value in plan.items():
            if old.get(key) != value:
                raise ValueError(f"{work} holds parts of another build ({key}: {old.get(key)!r} there, {value!r} now); "
                                 f"delete it or use another --out")
        remove_stale_temp_files(work)
    else:
        work.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(plan, indent=1))


def _drop_stale_parts(work: Path, wanted: set[str]) -> None:
    """Remove the part files of ``work`` this build does not make (another world size or part size);
    the trained quantizer is kept."""
    stale = [p for p in work.glob("part-*") if p.name.split(".")[0] not in wanted]
    for p in stale:
        p.unlink()
    if stale:
        logger.info("dropped %d part file(s) of another world size or part size from %s", len(stale), work)


def _trained_digest(index: GalleryIndex) -> str:
    """SHA-256 of ``index``'s FAISS serialisation without its entries: equal for parts of one trained state."""
    digest = hashlib.sha256()
    with emptied(index._index) as empty:
        faiss.write_index(empty, faiss.PyCallbackIOWriter(lambda chunk: digest.update(chunk) or len(chunk)))
    return digest.hexdigest()


def _check_part(part: GalleryIndex, path: Path, head: _Part | None) -> str:
    """Refuse (by name) a part that cannot be merged with the first (``head``); returns its trained digest."""
    if part.family != "ivf" or part._index is None:
        raise ValueError(f"part {path} is a {part.kind!r} index: only IVF kinds merge into an on-disk index")
    if part.num_slots != len(part):
        raise ValueError(f"part {path} has removed ids: rebuild it without them")
    digest = _trained_digest(part)
    if head is not None:
        for what, mine, theirs in (("dimension", part.dim, head.index.dim), ("kind", part.factory, head.index.factory),
                                   ("encoder fingerprint", part.fingerprint, head.index.fingerprint)):
            if mine != theirs:
                raise ValueError(f"part {path} has {what} {mine!r}, part {head.path} {theirs!r}")
        if digest != head.digest:
            raise ValueError(f"part {path} was trained apart from part {head.path} (another quantizer): parts must "
                             "share one trained index")
    return digest


@dataclasses.dataclass
class _Part:
    """What the merge needs of one part: its ids, metadata, length and a reader of its lists.

    An on-disk part's lists are read from its ``.ivfdata`` file directly, so its FAISS index (the
    quantizer, PQ and OPQ tables: 400 MB for 131,072 lists of 768-d) is let go once checked and only
    the first part's is held, however many parts there are. Other parts keep their index (``index``).
    """

    path: Path
    ids: IdMap
    metadata: dict[str, Any]
    length: int
    digest: str
    entries: Callable[[int], tuple[np.ndarray, np.ndarray]]
    index: Any = None

    @classmethod
    def of(cls, part: GalleryIndex, path: Path, digest: str, keep: bool) -> _Part:
        ivf = ivf_of(part._index)
        code_size = int(ivf.code_size)
        if part._on_disk:
            sizes = np.array([ivf.invlists.list_size(n) for n in range(ivf.nlist)], np.int64)
            starts = list_starts(sizes, code_size)
            data = np.memmap(part._mapped_files[1], np.uint8, mode="r") if starts[-1] else None

            def entries(list_no: int) -> tuple[np.ndarray, np.ndarray]:
                n = int(sizes[list_no])
                at = int(starts[list_no])
                if data is None or not n:
                    return np.zeros((0, code_size), np.uint8), np.zeros(0, np.int64)
                codes = data[at : at + n * code_size].reshape(n, code_size)
                return codes, data[at + n * code_size : at + n * (code_size + 8)].view("<i8")
        else:
            keep = True

            def entries(list_no: int) -> tuple[np.ndarray, np.ndarray]:
                n = int(ivf.invlists.list_size(list_no))
                if not n:
                    return np.zeros((0, code_size), np.uint8), np.zeros(0, np.int64)
                codes = faiss.rev_swig_ptr(ivf.invlists.get_codes(list_no), n * code_size).reshape(n, code_size)
                return codes, faiss.rev_swig_ptr(ivf.invlists.get_ids(list_no), n)

        return cls(path, part._ids, part.metadata, len(part), digest, entries, part if keep else None)


def _placements(parts: Sequence[_Part]) -> list[np.ndarray]:
    """Each part's runs as an (r, 3) array of (first local slot, first global slot, count).

    Parts with `PART_RUNS` go where their runs say (which must tile the global slots); parts without go
    one after another in the order given.
    """
    paths = [p.path for p in parts]
    marked = [PART_RUNS in p.metadata for p in parts]
    if any(marked) and not all(marked):
        raise ValueError(f"part {paths[marked.index(False)]} is not a part of the build {paths[marked.index(True)]} "
                         "belongs to: merge the parts of one build")
    out = []
    start = 0
    for part, path in zip(parts, paths):
        if all(marked):
            runs = np.asarray(part.metadata[PART_RUNS], np.int64).reshape(-1, 2)
            if int(runs[:, 1].sum()) != part.length or (runs < 0).any():
                raise ValueError(f"part {path}: its {PART_RUNS} do not cover its {part.length} vectors")
        else:
            runs = np.array([[start, part.length]], np.int64)
            start += part.length
        local = np.concatenate([[0], np.cumsum(runs[:, 1])])[: len(runs)].astype(np.int64)
        out.append(np.column_stack([local, runs]))
    every = np.concatenate([np.column_stack([p[:, 1:], np.full(len(p), i)]) for i, p in enumerate(out)])
    every = every[np.argsort(every[:, 0], kind="stable")]
    ends = every[:, 0] + every[:, 1]
    clash = np.flatnonzero(every[1:, 0] != ends[:-1])
    if every.size and (every[0, 0] != 0 or clash.size):
        at = int(clash[0]) if clash.size else 0
        raise ValueError(f"parts {paths[int(every[at, 2])]} and {paths[int(every[min(at + 1, len(every) - 1), 2])]} "
                         "overlap or leave a gap in the gallery's rows")
    return out


def _to_global(runs: np.ndarray, local: np.ndarray) -> np.ndarray:
    """Global slots of a part's ``local`` slots, given its runs (first local, first global, count)."""
    at = np.searchsorted(runs[:, 0], local, side="right") - 1
    return runs[at, 1] + (local - runs[at, 0])


def merge_parts(
    paths: Sequence[Path], out: Path, *, metadata: dict[str, Any] | None = None, progress: bool = True
) -> None:
    """Merge the IVF index files ``paths`` into the on-disk index ``out`` (`uit_reid.retrieval.ondisk`).

    One list at a time is read from the (memory-mapped) parts and written in global-slot order, so
    the lists never sit in memory together; the ids are streamed and the parts' sorted key tables
    merged a chunk at a time (`write_ids_file`); the parts are loaded and checked one at a time and
    an on-disk part's quantizer is let go once checked (`_Part`). Refuses, naming the part, parts of
    another dimension, kind, encoder or trained state, parts with removed ids, overlapping rows and
    ids found in two parts. ``metadata`` (default: the parts' ``embeddings`` records, shifted to their
    slots) is recorded in ``out``.
    """
    parts: list[_Part] = []
    for path in map(Path, paths):
        part = GalleryIndex.load(path, mmap=True)
        head = parts[0] if parts else None
        parts.append(_Part.of(part, path, _check_part(part, path, head), keep=head is None))
        del part
    _merge(parts, out, metadata=metadata, progress=progress)


def merge_indexes(
    parts: Sequence[GalleryIndex], paths: Sequence[Path], out: Path, *, metadata: dict[str, Any] | None = None,
    progress: bool = True,
) -> None:
    """`merge_parts` over loaded ``parts`` (named ``paths`` in messages); one part writes it as an on-disk index."""
    checked: list[_Part] = []
    for part, path in zip(parts, map(Path, paths)):
        head = checked[0] if checked else None
        checked.append(_Part.of(part, path, _check_part(part, path, head), keep=True))
    _merge(checked, out, metadata=metadata, progress=progress)


def _merge(parts: list[_Part], out: Path, *, metadata: dict[str, Any] | None, progress: bool) -> None:
    """Write the checked ``parts`` as the on-disk index ``out`` (`merge_parts`)."""
    if not parts:
        raise ValueError("no parts to merge")
    placements = _placements(parts)
    ivfdata, ids_file = side_files(out)
    pieces = sorted(
        ((int(run[1]), (part.ids, int(run[0]), int(run[0] + run[2]), f"part {part.path}"))
         for part, runs in zip(parts, placements) for run in runs if run[2]),
        key=lambda item: item[0])
    sources = [(part.ids, functools.partial(_to_global, runs)) for part, runs in zip(parts, placements)]
    try:
        write_ids_file(ids_file, [piece for _, piece in pieces], sources)
    except IdMapError as err:
        raise ValueError(str(err)) from None
    head = parts[0].index
    ivf = ivf_of(head._index)
    code_size = int(ivf.code_size)

    def entries(list_no: int) -> tuple[np.ndarray, np.ndarray]:
        codes, labels = [], []
        for part, runs in zip(parts, placements):
            part_codes, local = part.entries(list_no)
            if local.size:
                codes.append(part_codes)
                labels.append(_to_global(runs, local.astype(np.int64)))
        if not labels:
            return np.zeros((0, code_size), np.uint8), np.zeros(0, np.int64)
        label = np.concatenate(labels)
        order = np.argsort(label, kind="stable")
        return np.concatenate(codes)[order], label[order]

    sizes = write_lists(ivfdata, int(ivf.nlist), code_size, entries, progress=progress)
    if metadata is None:
        metadata = {k: v for k, v in head.metadata.items() if k not in (PART_RUNS, "embeddings")}
        shifted = [{**e, "first_slot": int(e["first_slot"]) + int(runs[0, 1])}
                   for part, runs in zip(parts, placements) if len(runs)
                   for e in part.metadata.get("embeddings", []) if isinstance(e, dict) and "first_slot" in e]
        if shifted:
            metadata["embeddings"] = shifted
    fields = {"dim": head.dim, "kind": head.kind, "factory": head.factory, "metric": "cosine",
              "normalization": "l2", "parameters": head.parameters(), "fingerprint": head.fingerprint,
              "metadata": metadata,
              ONDISK_FIELD: {"ivfdata": ivfdata.name, "ids": ids_file.name, "vectors": sum(sizes), "list_sizes": sizes}}
    with emptied(head._index) as empty:
        write_index_file(out, fields, IdMap(), empty)  # last: its presence means the side files are complete
    logger.info("merged %d parts (%d vectors) into %s", len(parts), sum(sizes), out)
